#!/usr/bin/env python3
"""Write a Portcullis config with N sites, each with its own certificate and key.

    bench/gen_sites.py N OUT_DIR [--https ADDR] [--admin ADDR] [--origin URL] [--extra K]

One ECDSA P-256 CA and N ECDSA P-256 leaves (`site-<i>.bench.test`, the key type
Portcullis' ACME client and local CA use), signed with python `cryptography` when it is
installed (10,000 sites in seconds), else with the openssl command (much slower).
Writes:

  OUT_DIR/ca.pem                 the CA (to verify a site, if wanted)
  OUT_DIR/certs/site-<i>.pem     the chain, leaf first; OUT_DIR/certs/site-<i>.key
  OUT_DIR/names.txt              one host name per line (for tlsload -N)
  OUT_DIR/sites.yaml             the config, N sites, all to ORIGIN
  OUT_DIR/sites-plus.yaml        the same with K more sites (--extra, default 1), for a reload

Keys are written 0600. Nothing here is meant to be kept: write into a temporary folder.
"""

import argparse
import datetime
import importlib.util
import os
import subprocess
import sys
import time


def write(path, data, mode=0o644):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def gen_cryptography(out, names):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(hours=1)
    later = now + datetime.timedelta(days=3)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Portcullis bench sites CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(later)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    ca_pem = ca.public_bytes(serialization.Encoding.PEM)
    write(os.path.join(out, "ca.pem"), ca_pem)
    ski = x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key())
    for i, name in enumerate(names):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now)
            .not_valid_after(later)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(ski, critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        base = os.path.join(out, "certs", f"site-{i}")
        write(base + ".pem", cert.public_bytes(serialization.Encoding.PEM) + ca_pem)
        write(base + ".key", key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()), 0o600)


def gen_openssl(out, names):
    def run(*args):
        subprocess.run(["openssl", *args], check=True, capture_output=True)

    ca_key, ca_pem = os.path.join(out, "ca.key"), os.path.join(out, "ca.pem")
    run("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", ca_key,
        "-out", ca_pem, "-days", "3", "-subj", "/CN=Portcullis bench sites CA",
        "-addext", "basicConstraints=critical,CA:true,pathlen:0", "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    ca_bytes = open(ca_pem, "rb").read()
    for i, name in enumerate(names):
        base = os.path.join(out, "certs", f"site-{i}")
        run("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", base + ".key", "-out", base + ".leaf", "-days", "3", "-subj", f"/CN={name}",
            "-CA", ca_pem, "-CAkey", ca_key, "-addext", f"subjectAltName=DNS:{name}",
            "-addext", "basicConstraints=critical,CA:false", "-addext", "extendedKeyUsage=serverAuth")
        os.chmod(base + ".key", 0o600)
        with open(base + ".pem", "wb") as f:
            f.write(open(base + ".leaf", "rb").read() + ca_bytes)
        os.remove(base + ".leaf")
    os.remove(ca_key)


def config(n, args):
    lines = [
        f"# {n} generated sites (bench/gen_sites.py); certificates in ./certs",
        "listen:",
        f"  https: {args.https}",
        "  http: off",
        "admin:",
        f"  listen: {args.admin}",
        "storage: ./data",
        "limits:",
        "  max_connections_per_ip: 0",
        "sites:",
    ]
    for i in range(n):
        lines += [
            f"  - hosts: [site-{i}.bench.test]",
            f"    tls: {{ cert: certs/site-{i}.pem, key: certs/site-{i}.key }}",
            f"    origin: {args.origin}",
        ]
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("n", type=int)
    ap.add_argument("out")
    ap.add_argument("--https", default="127.0.0.1:8443")
    ap.add_argument("--admin", default="127.0.0.1:9901")
    ap.add_argument("--origin", default="http://127.0.0.1:3000")
    ap.add_argument("--extra", type=int, default=1)
    a = ap.parse_args()
    if a.n < 1:
        sys.exit("gen_sites: N must be at least 1")
    os.makedirs(os.path.join(a.out, "certs"), exist_ok=True)
    names = [f"site-{i}.bench.test" for i in range(a.n + a.extra)]
    t0 = time.monotonic()
    if importlib.util.find_spec("cryptography"):
        gen_cryptography(a.out, names)
        how = "python cryptography"
    else:
        gen_openssl(a.out, names)
        how = "openssl"
    with open(os.path.join(a.out, "names.txt"), "w") as f:
        f.write("\n".join(names[: a.n]) + "\n")
    with open(os.path.join(a.out, "sites.yaml"), "w") as f:
        f.write(config(a.n, a))
    with open(os.path.join(a.out, "sites-plus.yaml"), "w") as f:
        f.write(config(a.n + a.extra, a))
    print(f"gen_sites: {a.n} sites (+{a.extra}) in {a.out} with {how} in {time.monotonic() - t0:.1f} s",
          file=sys.stderr)


if __name__ == "__main__":
    main()
