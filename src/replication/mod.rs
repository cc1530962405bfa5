pub mod recovery;
