//! Parses and validates the inventory YAML into a resolved cluster model.
