//! What to do about an error: the one-line suggestion shown after it as `hint:`.
//!
//! Every error type that has something to suggest implements [`Hint`], so the CLI turns any of
//! them into a message and a hint the same way, whatever crate the error comes from.

/// A one-line suggestion for the user about this error, or `None` when there is nothing useful
/// to say beyond the message.
pub trait Hint {
    fn hint(&self) -> Option<String>;
}

impl<T: Hint + ?Sized> Hint for &T {
    fn hint(&self) -> Option<String> {
        (**self).hint()
    }
}

impl<T: Hint + ?Sized> Hint for Box<T> {
    fn hint(&self) -> Option<String> {
        (**self).hint()
    }
}
