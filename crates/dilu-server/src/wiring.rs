//! The glue between the reconciler and the gateway, which know nothing of each other: the gateway's counts
//! feed the reconciler's [`LoadSource`], and the reconciler's routes feed the gateway's [`EndpointSource`].

use std::sync::{Arc, Weak};

use dilu_control::{Controller, LoadSource, Window};
use dilu_gateway::{EndpointSource, Gateway, RoutingTable};
use tokio::sync::watch;

/// The gateway's traffic counts, as the reconciler reads them.
pub struct GatewayLoad(pub Arc<Gateway>);

impl LoadSource for GatewayLoad {
    fn take_window(&self, function: &str) -> Window {
        self.0
            .take_window(function)
            .map(|w| Window {
                arrivals: w.arrivals,
                queued_now: w.queued_now,
                answered: w.completed + w.failed,
                late: w.late,
            })
            .unwrap_or_default()
    }

    fn in_flight(&self, function: &str, instance: &str) -> usize {
        self.0
            .outstanding(function)
            .into_iter()
            .find(|(id, _)| id == instance)
            .map_or(0, |(_, n)| n)
    }
}

/// The reconciler's routes, as the gateway follows them; a waiting request wakes the reconciler.
pub struct ControllerRoutes {
    routes: watch::Receiver<RoutingTable>,
    controller: Weak<Controller>,
}

impl ControllerRoutes {
    /// The routes of `controller`.
    pub fn new(controller: &Arc<Controller>) -> Arc<ControllerRoutes> {
        Arc::new(ControllerRoutes {
            routes: controller.routes(),
            controller: Arc::downgrade(controller),
        })
    }
}

impl EndpointSource for ControllerRoutes {
    fn routes(&self) -> watch::Receiver<RoutingTable> {
        self.routes.clone()
    }

    fn wake(&self, function: &str) {
        if let Some(c) = self.controller.upgrade() {
            c.wake(function);
        }
    }
}
