//! SLO specs, Prometheus rule generation and error-budget math.
