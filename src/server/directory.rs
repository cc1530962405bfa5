//! The login layer's view of the catalog: which targets exist, who may log in, CHAP.

use std::sync::Arc;

use crate::iscsi::login::{TargetAccess, TargetDirectory};
use crate::server::Shared;

pub struct Directory {
    node: Arc<Shared>,
}

impl Directory {
    pub fn new(node: Arc<Shared>) -> Directory {
        Directory { node }
    }
}

impl TargetDirectory for Directory {
    fn lookup(&self, target_name: &str) -> Option<TargetAccess> {
        let cat = self.node.catalog.read();
        cat.targets.get(target_name).map(|t| TargetAccess {
            acl: t.acl.clone(),
            chap: t.chap.clone(),
        })
    }

    fn list_targets(&self, initiator: &str) -> Vec<String> {
        let cat = self.node.catalog.read();
        cat.targets
            .iter()
            .filter(|(_, t)| t.acl.is_empty() || t.acl.contains(initiator))
            .map(|(n, _)| n.clone())
            .collect()
    }

    fn session_exists(
        &self,
        initiator: &str,
        isid: [u8; 6],
        tsih: u16,
        target: Option<&str>,
    ) -> bool {
        self.node
            .sessions
            .exists(initiator, isid, tsih, target.unwrap_or(""))
    }
}
