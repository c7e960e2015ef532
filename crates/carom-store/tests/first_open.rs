//! The first databases of a process, created by several threads at the same moment (its own
//! test binary, so that nothing has initialised SQLite before): each must be keyed and usable.
//! SQLite marks itself initialised before SQLCipher's part of the initialisation has run, and a
//! store keyed in that window failed with a bare `SQLITE_ERROR`.

use std::sync::{Arc, Barrier};

use carom_store::{DbKey, Store, StoreRead};

#[test]
fn the_first_stores_of_a_process_can_be_created_at_the_same_moment() {
    const THREADS: usize = 8;
    let dir = tempfile::tempdir().expect("temp dir");
    let start = Arc::new(Barrier::new(THREADS));
    let threads: Vec<_> = (0..THREADS)
        .map(|i| {
            let path = dir.path().join(format!("store-{i}.db"));
            let start = Arc::clone(&start);
            std::thread::spawn(move || {
                let key = DbKey::generate().expect("key");
                start.wait();
                let store = Store::create(&path, &key).expect("the store is created and keyed");
                store.last_event_seq().expect("and readable")
            })
        })
        .collect();
    for thread in threads {
        assert_eq!(thread.join().expect("no panic"), 0);
    }
}
