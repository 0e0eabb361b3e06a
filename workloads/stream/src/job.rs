//! What a user's streaming job is ([`StreamJob`]) and how an operator instance, in another
//! process of the same binary, finds it again: [`register_stream_job!`](crate::register_stream_job)
//! puts the job type in a table every process has, under its type name (as
//! `#[fleet::actor]` does for actors). The job travels as its serialized configuration and
//! each process rebuilds the same graph from it.

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::graph::{Plan, StreamEnv};

/// A streaming job: its configuration is the value itself (sizes, paths, rates), and
/// `build` adds its sources, operators and sinks to the graph. `build` must make the same
/// graph every time it runs on the same configuration (it runs in every process).
pub trait StreamJob: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// Adds the job's dataflow to `env`.
    fn build(&self, env: &mut StreamEnv);
}

/// Builds the plan of a job from its encoded configuration.
pub type PlanEntryPoint = fn(&[u8], usize) -> Result<Plan, String>;

/// A registered job type.
#[doc(hidden)]
pub struct JobEntry {
    /// `std::any::type_name` of the job type.
    pub name: fn() -> &'static str,
    /// Its plan builder.
    pub plan: PlanEntryPoint,
}

inventory::collect!(JobEntry);

/// Builds job type `J`'s plan from its bincode configuration.
#[doc(hidden)]
pub fn plan_of<J: StreamJob>(job: &[u8], parallelism: usize) -> Result<Plan, String> {
    let job: J = bincode::deserialize(job)
        .map_err(|e| format!("the job's configuration does not decode ({e})"))?;
    plan_for(&job, parallelism)
}

pub(crate) fn plan_for<J: StreamJob>(job: &J, parallelism: usize) -> Result<Plan, String> {
    let mut env = StreamEnv::new(parallelism);
    job.build(&mut env);
    env.into_plan()
}

/// The plan builder of the job type named `name`, when it is registered in this binary.
pub(crate) fn find(name: &str) -> Result<PlanEntryPoint, String> {
    inventory::iter::<JobEntry>
        .into_iter()
        .find(|entry| (entry.name)() == name)
        .map(|entry| entry.plan)
        .ok_or_else(|| {
            format!(
                "stream job type {name} is not registered in this binary: add fleet_stream::register_stream_job!({}) at the top level of the crate that defines it",
                name.rsplit("::").next().unwrap_or(name)
            )
        })
}

/// Makes a [`StreamJob`] type runnable: call it once at the top level of the crate that
/// defines the type.
///
/// ```ignore
/// #[derive(Serialize, Deserialize)]
/// struct HotItems { events: u64 }
/// impl fleet_stream::StreamJob for HotItems { fn build(&self, env: &mut StreamEnv) { .. } }
/// fleet_stream::register_stream_job!(HotItems);
/// ```
#[macro_export]
macro_rules! register_stream_job {
    ($job:ty) => {
        $crate::__private::inventory::submit! {
            $crate::job::JobEntry {
                name: ::std::any::type_name::<$job>,
                plan: $crate::job::plan_of::<$job>,
            }
        }
    };
}
