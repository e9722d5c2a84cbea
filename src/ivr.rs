//! TODO (issue 4)
