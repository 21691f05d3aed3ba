//! The applet types ("load files") compiled into the `tessera` program. Card images name
//! the load files of their instances; opening an image needs every one of them here.

use tessera_os::LoadFile;

/// Every load file this program provides.
pub fn load_files() -> Vec<LoadFile> {
    let mut v = vec![
        tessera_os::diag::load_file(),
        tessera_os::diag::load_file_multi(),
    ];
    v.extend(tessera_host::flows::kit::load_files());
    v
}
