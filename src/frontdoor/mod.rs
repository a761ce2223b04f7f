//! Front doors: how requests reach the attach flow.
pub mod api;
pub mod cni;
pub mod docker;
