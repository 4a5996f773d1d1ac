//! The environment scrub, in a test binary of its own: it changes the
//! process environment, which no other test may read meanwhile.

#[test]
fn a_scrubbed_variable_is_overwritten_in_place_and_removed() {
    const NAME: &str = "REGATTA_SECRET_SCRUB_TEST";
    // SAFETY: the only test of this binary; nothing else reads the
    // environment meanwhile.
    unsafe {
        std::env::set_var(NAME, "hide-me");
        let value = nix::libc::getenv(c"REGATTA_SECRET_SCRUB_TEST".as_ptr());
        assert!(!value.is_null());
        regatta_secret::scrub_environment(&[NAME]);
        // glibc never frees the strings `setenv` allocated, so the old
        // value is still readable: overwritten.
        assert_eq!(std::ffi::CStr::from_ptr(value).to_bytes(), b"xxxxxxx");
    }
    assert!(std::env::var_os(NAME).is_none());
}
