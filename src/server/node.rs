//! The state one twinlun process serves from: its data dir, catalog, open volumes and sessions.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use parking_lot::RwLock;

use crate::catalog::Catalog;
use crate::server::SessionRegistry;
use crate::volume::{Engine, Volume};

pub struct Node {
    pub data_dir: PathBuf,
    pub engine: Engine,
    /// The model. Mutated only by `admin` (validate, persist atomically, then swap).
    pub catalog: RwLock<Catalog>,
    /// Open volumes by name; kept in step with `catalog.volumes`.
    pub volumes: RwLock<HashMap<String, Arc<Volume>>>,
    pub sessions: SessionRegistry,
}
