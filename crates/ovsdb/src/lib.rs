//! Async OVSDB client (RFC 7047).
