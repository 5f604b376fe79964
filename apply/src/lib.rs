pub mod mapping;
