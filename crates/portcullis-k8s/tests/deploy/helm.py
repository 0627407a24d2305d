"""Renders and lints the Helm chart with Helm's own engine, for tests/deploy.rs.

The engine is helm-python-sdk (PyPI), which binds Helm's Go SDK (v4) through a C library:
the same template engine, value merging and linter as the `helm` command, with no cluster.
.ci/run installs it (.ci/requirements-helm.txt).

usage: helm.py CHART_DIR RELEASE NAMESPACE VALUES_JSON
prints {"manifests": {template: text}, "lint": {...}, "helm": version}; exits 3 when the
engine is not installed, 1 when the chart does not render.
"""

import json
import sys

try:
    import helm_python as helm
except ImportError as e:
    print(f"helm.py: cannot import helm_python ({e})", file=sys.stderr)
    sys.exit(3)


def main():
    chart_dir, release, namespace, values = sys.argv[1:5]
    values = json.loads(values)
    try:
        with helm.Chart.load(chart_dir) as chart:
            manifests = chart.render(
                values, name=release, namespace=namespace, is_install=True
            )
    except helm.HelmError as e:
        print(f"helm.py: render failed: {e}", file=sys.stderr)
        sys.exit(1)
    lint = helm.lint(chart_dir, values, strict=True, namespace=namespace)
    json.dump(
        {"manifests": manifests, "lint": lint, "helm": helm.helm_sdk_version()},
        sys.stdout,
    )


main()
