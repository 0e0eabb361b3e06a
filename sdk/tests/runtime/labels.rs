//! Label selectors on the embedded node (labelled `zone=here`, `disk=ssd`): required labels
//! it has run, required labels it lacks fail at once naming its labels and the fix,
//! preferences it cannot meet still run.

use anyhow::{anyhow, ensure, Result};
use fleet::{Error, LabelSelector};

#[fleet::actor]
pub struct Placed;

#[fleet::actor]
impl Placed {
    pub fn new() -> Self {
        Placed
    }

    pub fn node(&self) -> String {
        fleet::node_id()
    }
}

pub async fn label_selectors_choose_nodes_by_their_labels() -> Result<()> {
    let here = fleet::node_id();
    let required = LabelSelector::new()
        .require("zone", "here")
        .require_in("disk", ["ssd", "nvme"])
        .require_not("spot", "true");
    let ran_on = super::where_am_i::options()
        .label_selector(required)
        .remote()
        .await?;
    ensure!(ran_on == here, "ran on {ran_on}, not {here}");
    // A preference no node meets is only a preference.
    let preferred = LabelSelector::new().prefer("zone", "mars");
    ensure!(
        super::where_am_i::options()
            .label_selector(preferred)
            .remote()
            .await?
            == here
    );
    // A requirement no node meets fails at once, naming what each node has and the fix.
    let mars = LabelSelector::new().require("zone", "mars");
    match super::where_am_i::options()
        .label_selector(mars.clone())
        .remote()
        .await
    {
        Err(Error::Infeasible(message))
            if message.contains("zone=mars")
                && message.contains("zone: here")
                && message.contains("--label") => {}
        other => return Err(anyhow!("a task requiring zone=mars: {other:?}")),
    }
    // Actors too.
    let actor = Placed::remote()
        .label_selector(LabelSelector::new().require_exists("disk"))
        .spawn()
        .await?;
    ensure!(actor.node().await? == here);
    actor.raw().kill().await?;
    match Placed::remote().label_selector(mars).spawn().await {
        Err(Error::Infeasible(message)) if message.contains("zone=mars") => {}
        other => return Err(anyhow!("an actor requiring zone=mars: {other:?}")),
    }
    Ok(())
}
