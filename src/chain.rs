//! Printing an error with every cause under it.

use std::fmt;

/// An error and its causes, for a log line or a status: "saving the state failed:
/// i/o error on staging.log: No space left on device".
pub struct ErrorChain<'a>(pub &'a (dyn std::error::Error + 'static));

impl fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut shown = self.0.to_string();
        let mut cause = self.0.source();
        while let Some(c) = cause {
            // A message that already ends with its cause's (`"{path}: {source}"`)
            // does not say it twice.
            let text = c.to_string();
            if !shown.ends_with(&text) {
                shown.push_str(": ");
                shown.push_str(&text);
            }
            cause = c.source();
        }
        f.write_str(&shown)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io;

    #[derive(Debug, thiserror::Error)]
    enum E {
        #[error("i/o error on {path}")]
        Bare {
            path: &'static str,
            #[source]
            source: io::Error,
        },
        #[error("i/o error on {path}: {source}")]
        Said {
            path: &'static str,
            #[source]
            source: io::Error,
        },
        #[error("saving failed")]
        Outer(#[source] Box<E>),
    }

    #[test]
    fn every_cause_is_said_once() {
        let full = || io::Error::from_raw_os_error(libc::ENOSPC);
        let bare = E::Outer(Box::new(E::Bare {
            path: "staging.log",
            source: full(),
        }));
        assert_eq!(
            ErrorChain(&bare).to_string(),
            format!("saving failed: i/o error on staging.log: {}", full())
        );
        let said = E::Said {
            path: "v.img",
            source: full(),
        };
        assert_eq!(
            ErrorChain(&said).to_string(),
            format!("i/o error on v.img: {}", full())
        );
    }
}
