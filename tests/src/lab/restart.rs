//! A node's vswitchd started again in a running lab, as after a crash: same configuration,
//! state directory and socket.

use super::Lab;

impl Lab {
    /// Kills node `node`'s vswitchd (-9) if it still runs, reaps it, and starts it again.
    pub fn restart_vswitchd(&mut self, node: usize) {
        let workers = self.spec.workers;
        let daemon = &mut self.daemons[node];
        daemon.kill9();
        daemon.spawn(&self.nodes[node], workers);
    }
}
