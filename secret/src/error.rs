//! Why a secret was refused, each saying how to make a good one.

/// How to make a secret, quoted by every error.
const MAKE_ONE: &str = "make one with `openssl rand -hex 32`";

/// What is wrong with the fleet's secret.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no secret: set REGATTA_SECRET_FILE (or --secret-file) to a file holding it, or REGATTA_SECRET; {MAKE_ONE}")]
    Missing,
    #[error("--secret-file/REGATTA_SECRET_FILE and --secret/REGATTA_SECRET are both set: give the secret one way only")]
    Ambiguous,
    #[error("cannot read the secret file {path} (--secret-file/REGATTA_SECRET_FILE): {source}")]
    File {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the secret from {from} is not UTF-8 text; {MAKE_ONE}")]
    NotText { from: String },
    #[error("the secret from {from} is {len} bytes long; at least {min} are needed, so that it cannot be guessed: {MAKE_ONE}")]
    TooShort {
        from: String,
        len: usize,
        min: usize,
    },
    #[error("the secret from {from} is the placeholder of deploy/example.env (or another well-known value): anyone could forge orders with it; {MAKE_ONE}")]
    Placeholder { from: String },
}
