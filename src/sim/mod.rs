//! The IntelePeer simulator (placeholder; see the brief).
