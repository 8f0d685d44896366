//! The one clock of the daemons' and tools' policy decisions (which
//! generation is expired, when a policy runs out, when a key may go).

/// Seconds since the Unix epoch (0 if the system clock is before it).
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
