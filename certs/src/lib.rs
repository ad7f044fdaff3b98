//! TLS certificates (issue #6, not built yet): the SNI certificate store, ACME orders (DNS-01 for
//! the wildcard, HTTP-01 for customers' domains) and renewal. Empty until then, so the workspace
//! layout is the architecture's.
