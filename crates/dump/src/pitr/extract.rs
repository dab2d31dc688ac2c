//! Extracting a base backup set into a new data directory (stage 3).
