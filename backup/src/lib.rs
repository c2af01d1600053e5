//! capstan-backup: see ARCHITECTURE.md. Filled in by later issues.
