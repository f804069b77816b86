//! The dialer's carrier adapters against carrier-sim over HTTP.

mod adapters;
