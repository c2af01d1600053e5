//! capstan-monitoring: see ARCHITECTURE.md. Filled in by later issues.
