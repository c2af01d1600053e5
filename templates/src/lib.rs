//! Every config file and unit capstan writes, as minijinja templates embedded in the binary.
