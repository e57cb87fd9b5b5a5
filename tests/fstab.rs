//! Mounting through mount(8), exactly as an /etc/fstab entry does, in both of its forms (see
//! `fstab_common`), with the binary under test.

mod common;
mod fstab_common;

#[test]
fn fstab_entries_in_both_forms_mount_through_mount_8() {
    fstab_common::fstab_entries_in_both_forms(std::path::Path::new(common::bin()));
}
