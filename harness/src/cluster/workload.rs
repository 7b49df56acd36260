//! The workload: `dp-probe serve` backends in pods.
