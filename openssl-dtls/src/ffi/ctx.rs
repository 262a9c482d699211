//! See the [module table](super).
