//! gRPC over Unix sockets: a tonic channel to a socket file, serving on one, and a file identity to notice a
//! recreated socket.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use hyper_util::rt::TokioIo;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::UnixListenerStream;
use tonic::transport::server::Router;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::Error;

/// A tonic channel to the gRPC server on the Unix socket `path` (connected now).
pub async fn connect(path: &Path) -> Result<Channel, Error> {
    let target = path.to_path_buf();
    // The URI is required by tonic but unused: the connector ignores it and dials the socket.
    let endpoint = Endpoint::from_static("http://[::1]:1");
    endpoint
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let target = target.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(target).await?;
                Ok::<_, std::io::Error>(TokioIo::new(stream))
            }
        }))
        .await
        .map_err(|source| Error::Connect {
            path: path.to_path_buf(),
            source,
        })
}

/// What tells one file at a path from the next one created there: device, inode and change time (an inode
/// number alone can be reused at once by a file system after the old file is removed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileIdentity {
    dev: u64,
    ino: u64,
    ctime: i64,
    ctime_nsec: i64,
}

/// The identity of the file at `path`, or `None` when there is none.
pub fn identity(path: &Path) -> Option<FileIdentity> {
    std::fs::symlink_metadata(path).ok().map(|m| FileIdentity {
        dev: m.dev(),
        ino: m.ino(),
        ctime: m.ctime(),
        ctime_nsec: m.ctime_nsec(),
    })
}

/// Binds a Unix listener at `path`, removing a stale socket file left there first.
pub fn bind(path: &Path) -> Result<tokio::net::UnixListener, Error> {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io("removing stale socket", PathBuf::from(path))(e)),
    }
    tokio::net::UnixListener::bind(path).map_err(Error::io("binding", path))
}

/// Serves `router` on `listener` on a task of its own, until the returned sender is used or dropped.
pub fn spawn_serving(
    listener: tokio::net::UnixListener,
    router: Router,
) -> (oneshot::Sender<()>, JoinHandle<()>) {
    let (shutdown, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let _ = router
            .serve_with_incoming_shutdown(UnixListenerStream::new(listener), async {
                let _ = stopped.await;
            })
            .await;
    });
    (shutdown, task)
}
