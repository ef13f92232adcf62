//! The bake, in the order it runs. In: the image definition, verified etcd binaries and their
//! runtime libraries, `SOURCE_DATE_EPOCH`. Out: a verified OCI layout and archive.
//! `plan.rs` freezes every input into a `Plan`; `layer.rs` streams a layer from it (tar ->
//! sha256 -> gzip -> sha256 -> temp file); `oci.rs` the OCI documents and their digests;
//! `bake.rs` writes layers, config, manifest and index, verifies the staged layout and renames it
//! into place. What checks an image (`verify`), reads ELF files (`elf`) and states the
//! definition's rules (`spec`) lives one level up, beside the command.

pub mod bake;
pub mod layer;
pub mod oci;
pub mod plan;
