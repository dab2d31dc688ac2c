//! Recovery settings, start and wait (stage 3).
