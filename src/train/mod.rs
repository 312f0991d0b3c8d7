//! Training on data captured on site: `affectd train ...`.

pub mod heads;
