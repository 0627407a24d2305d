//! Kubernetes. No real API server can run on these machines, so the harness's fake one
//! (`portcullis_tests::FakeApiServer`) stands in for it; these suites hold it to real
//! clients: the real `kubectl` v1.32 (`kubectl`) and kube-rs, the client the controller
//! is built on (`fake_api`).

mod acme_secrets;
mod fake_api;
mod ingress;
mod ingress_writers;
mod kubectl;
mod leader;
mod rbac;
mod source;
mod writers;
