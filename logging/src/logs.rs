//! `capstan logs`: reading the journals back.
