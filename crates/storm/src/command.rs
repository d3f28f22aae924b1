//! The `storm` command lines the operator runs in Jobs from the cluster's image.
//!
//! To be filled in: submission (`storm jar`) and rebalance (`storm rebalance -w -n`).
