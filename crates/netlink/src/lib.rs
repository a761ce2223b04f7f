//! rtnetlink operations for edge bindings.
