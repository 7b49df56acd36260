//! Deploying and restarting `datapathd` on a node.
