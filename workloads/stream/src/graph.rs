//! The typed API a job is written in ([`StreamEnv`], [`DataStream`], [`KeyedStream`],
//! [`WindowedStream`], [`ConnectedStreams`]) and the plan it builds: stages of fused
//! operators separated by keyed exchanges.
//!
//! Building is deterministic: every process of the job (the driver and each operator
//! instance, all this program's binary) runs the job's `build` and gets the same plan, and
//! an instance keeps only its own stage. That is how user closures reach the instances
//! without being serialized.

use std::cell::RefCell;
use std::hash::Hash;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::aggregate::AggregateFunction;
use crate::operators::{
    key_hash, AssignTimestampsOp, BoundedOutOfOrder, FilterMapOp, FilterOp, FlatMapOp,
    KeyedProcessFunction, KeyedProcessOp, MapOp,
};
use crate::pipe::{Chained, Either, InputHead, Operator, Pipe, SourceHead, TwoInputHead};
use crate::sink::{Sink, SinkContext};
use crate::source::Source;
use crate::stage::{ExchangeTail, SinkTail, StageBody};
use crate::window::{WindowOp, WindowResult, Windows};

/// Where an operator instance runs.
#[derive(Clone, Debug)]
pub struct InstanceContext {
    /// The job's name.
    pub job: String,
    /// The stage.
    pub stage: usize,
    /// This instance.
    pub instance: usize,
    /// Instances of the stage.
    pub parallelism: usize,
}

pub(crate) type BodyFactory =
    Arc<dyn Fn(&InstanceContext) -> Result<Box<dyn StageBody>, String> + Send + Sync>;
type PipeFactory<T> =
    Arc<dyn Fn(&InstanceContext) -> Result<Box<dyn Pipe<T>>, String> + Send + Sync>;

/// One stage of the plan.
pub(crate) struct StageSpec {
    /// Operators fused in it, for names in reports and errors.
    pub name: String,
    /// The upstream stage feeding each input port.
    pub inputs: Vec<usize>,
    pub is_source: bool,
    pub body: Option<BodyFactory>,
}

/// A job's stages (built by every process from the job's configuration).
#[doc(hidden)]
pub struct Plan {
    pub(crate) parallelism: usize,
    pub(crate) stages: Vec<StageSpec>,
}

impl Plan {
    /// The stages that stage `stage` sends to (each with the port it feeds).
    pub fn outputs_of(&self, stage: usize) -> Vec<(usize, usize)> {
        let mut outputs = Vec::new();
        for (downstream, spec) in self.stages.iter().enumerate() {
            for (port, upstream) in spec.inputs.iter().enumerate() {
                if *upstream == stage {
                    outputs.push((downstream, port));
                }
            }
        }
        outputs
    }

    /// Checks that every stage ends somewhere (a stream without a sink computes nothing).
    pub fn validate(&self) -> Result<(), String> {
        if self.stages.is_empty() {
            return Err("the job's build added no source: call env.source(..)".into());
        }
        for (index, stage) in self.stages.iter().enumerate() {
            if stage.body.is_none() {
                return Err(format!(
                    "stage {index} ({}) ends in neither a sink nor a keyed operator: finish the stream with .sink(..)",
                    stage.name
                ));
            }
        }
        Ok(())
    }
}

/// The job graph under construction, handed to [`StreamJob::build`](crate::StreamJob::build).
pub struct StreamEnv {
    plan: Rc<RefCell<Plan>>,
}

impl StreamEnv {
    pub(crate) fn new(parallelism: usize) -> StreamEnv {
        StreamEnv {
            plan: Rc::new(RefCell::new(Plan {
                parallelism: parallelism.max(1),
                stages: Vec::new(),
            })),
        }
    }

    pub(crate) fn into_plan(self) -> Result<Plan, String> {
        let plan = Rc::try_unwrap(self.plan)
            .map_err(|_| "a stream of the job was kept past build()".to_string())?
            .into_inner();
        plan.validate()?;
        Ok(plan)
    }

    /// Instances of every operator.
    pub fn parallelism(&self) -> usize {
        self.plan.borrow().parallelism
    }

    /// A stream read from `source`, split over the instances.
    pub fn source<S: Source>(&mut self, source: S) -> DataStream<S::Item> {
        let source = Arc::new(source);
        let stage = {
            let mut plan = self.plan.borrow_mut();
            plan.stages.push(StageSpec {
                name: "source".into(),
                inputs: Vec::new(),
                is_source: true,
                body: None,
            });
            plan.stages.len() - 1
        };
        DataStream {
            plan: self.plan.clone(),
            stage,
            pipe: Arc::new(move |ctx: &InstanceContext| {
                let reader = source.reader(ctx.instance, ctx.parallelism)?;
                Ok(Box::new(SourceHead { reader }) as Box<dyn Pipe<S::Item>>)
            }),
        }
    }
}

/// A stream of records of type `T` (inside one stage until a keyed operator or a sink).
pub struct DataStream<T> {
    plan: Rc<RefCell<Plan>>,
    stage: usize,
    pipe: PipeFactory<T>,
}

impl<T: Send + 'static> DataStream<T> {
    fn then<U: Send + 'static, O>(
        self,
        name: &str,
        make: impl Fn() -> O + Send + Sync + 'static,
    ) -> DataStream<U>
    where
        O: Operator<T, U> + 'static,
    {
        let pipe = self.pipe;
        self.plan.borrow_mut().stages[self.stage].name += &format!(" → {name}");
        DataStream {
            plan: self.plan,
            stage: self.stage,
            pipe: Arc::new(move |ctx: &InstanceContext| {
                Ok(Box::new(Chained::new(pipe(ctx)?, make())) as Box<dyn Pipe<U>>)
            }),
        }
    }

    /// Applies `f` to every record.
    pub fn map<U: Send + 'static>(
        self,
        f: impl Fn(T) -> U + Send + Sync + 'static,
    ) -> DataStream<U> {
        let f = Arc::new(f);
        self.then("map", move || MapOp(f.clone()))
    }

    /// Keeps the records `f` accepts.
    pub fn filter(self, f: impl Fn(&T) -> bool + Send + Sync + 'static) -> DataStream<T> {
        let f = Arc::new(f);
        self.then("filter", move || FilterOp(f.clone()))
    }

    /// Maps and filters in one: records `f` maps to `None` are dropped.
    pub fn filter_map<U: Send + 'static>(
        self,
        f: impl Fn(T) -> Option<U> + Send + Sync + 'static,
    ) -> DataStream<U> {
        let f = Arc::new(f);
        self.then("filter_map", move || FilterMapOp(f.clone()))
    }

    /// Maps each record to any number of records.
    pub fn flat_map<U: Send + 'static, I: IntoIterator<Item = U> + 'static>(
        self,
        f: impl Fn(T) -> I + Send + Sync + 'static,
    ) -> DataStream<U> {
        let f = Arc::new(f);
        self.then("flat_map", move || FlatMapOp(f.clone()))
    }

    /// Sets each record's event time (ms) and generates watermarks that trail the largest
    /// time seen by `bound`: records later than that are late.
    pub fn assign_timestamps(
        self,
        timestamp: impl Fn(&T) -> i64 + Send + Sync + 'static,
        bound: BoundedOutOfOrder,
    ) -> DataStream<T> {
        let timestamp = Arc::new(timestamp);
        let bound_ms = bound.0.as_millis() as i64;
        self.then("assign_timestamps", move || AssignTimestampsOp {
            timestamp: timestamp.clone(),
            bound_ms,
            max_seen: i64::MIN,
            emitted: i64::MIN,
        })
    }

    /// Applies a user operator (any [`Operator`]: state, watermarks and checkpoints
    /// included); `make` builds one per instance.
    pub fn transform<U: Send + 'static, O: Operator<T, U> + 'static>(
        self,
        name: &str,
        make: impl Fn() -> O + Send + Sync + 'static,
    ) -> DataStream<U> {
        self.then(name, make)
    }

    /// Partitions the stream by key: records of one key go to one instance of the next
    /// operator, which keeps that key's state.
    pub fn key_by<K>(self, key: impl Fn(&T) -> K + Send + Sync + 'static) -> KeyedStream<K, T>
    where
        K: Hash + Eq + Clone + Send + 'static,
    {
        KeyedStream {
            stream: self,
            key: Arc::new(key),
        }
    }

    /// Ends the stream in `sink` (one writer per instance, in this stage).
    pub fn sink<S: Sink<T>>(self, sink: S) {
        let sink = Arc::new(sink);
        let pipe = self.pipe;
        let mut plan = self.plan.borrow_mut();
        let stage = &mut plan.stages[self.stage];
        stage.name += " → sink";
        stage.body = Some(Arc::new(move |ctx: &InstanceContext| {
            let writer = sink.writer(&SinkContext {
                job: ctx.job.clone(),
                stage: ctx.stage,
                instance: ctx.instance,
                parallelism: ctx.parallelism,
            })?;
            Ok(Box::new(SinkTail {
                pipe: pipe(ctx)?,
                writer,
                out: Vec::new(),
            }) as Box<dyn StageBody>)
        }));
    }
}

/// A stream partitioned by key.
pub struct KeyedStream<K, T> {
    stream: DataStream<T>,
    key: Arc<dyn Fn(&T) -> K + Send + Sync>,
}

impl<K, T> KeyedStream<K, T>
where
    K: Hash + Eq + Clone + Send + 'static,
    T: Serialize + DeserializeOwned + Send + 'static,
{
    /// Ends the upstream stage in an exchange feeding port `port` of a new (or given)
    /// downstream stage; returns the downstream stage.
    fn exchange(self, into: Option<usize>) -> (Rc<RefCell<Plan>>, usize) {
        let DataStream { plan, stage, pipe } = self.stream;
        let key = self.key;
        let route: Arc<dyn Fn(&T) -> u64 + Send + Sync> =
            Arc::new(move |record| key_hash(&key(record)));
        let downstream = {
            let mut p = plan.borrow_mut();
            let targets = p.parallelism;
            p.stages[stage].body = Some(Arc::new(move |ctx: &InstanceContext| {
                Ok(
                    Box::new(ExchangeTail::new(pipe(ctx)?, route.clone(), targets))
                        as Box<dyn StageBody>,
                )
            }));
            match into {
                Some(existing) => {
                    p.stages[existing].inputs.push(stage);
                    existing
                }
                None => {
                    p.stages.push(StageSpec {
                        name: "keyed".into(),
                        inputs: vec![stage],
                        is_source: false,
                        body: None,
                    });
                    p.stages.len() - 1
                }
            }
        };
        (plan, downstream)
    }

    /// Event-time windows over each key.
    pub fn window(self, windows: Windows) -> WindowedStream<K, T> {
        WindowedStream {
            keyed: self,
            windows,
            allowed_lateness: 0,
        }
    }

    /// Per-key logic with state and timers.
    pub fn process<O, F>(self, function: F) -> DataStream<O>
    where
        K: Ord + Serialize + DeserializeOwned,
        O: Send + 'static,
        F: KeyedProcessFunction<K, T, O>,
    {
        let key = self.key.clone();
        let (plan, stage) = self.exchange(None);
        let function = Arc::new(function);
        plan.borrow_mut().stages[stage].name += " → process";
        DataStream {
            plan,
            stage,
            pipe: Arc::new(move |_ctx: &InstanceContext| {
                let key = key.clone();
                let op = KeyedProcessOp::new(function.clone(), move |r: &T| key(r));
                Ok(Box::new(Chained::new(InputHead::<T>::new(), op)) as Box<dyn Pipe<O>>)
            }),
        }
    }

    /// Connects this stream with another keyed by the same key type: a two-input
    /// operator sees both (as [`Either`]), each key's records of both on one instance.
    pub fn connect<U>(self, other: KeyedStream<K, U>) -> ConnectedStreams<K, T, U>
    where
        U: Serialize + DeserializeOwned + Send + 'static,
    {
        ConnectedStreams {
            left: self,
            right: other,
        }
    }
}

/// A keyed stream cut into windows.
pub struct WindowedStream<K, T> {
    keyed: KeyedStream<K, T>,
    windows: Windows,
    allowed_lateness: i64,
}

impl<K, T> WindowedStream<K, T>
where
    K: Hash + Eq + Clone + Serialize + DeserializeOwned + Send + 'static,
    T: Serialize + DeserializeOwned + Send + 'static,
{
    /// Keeps windows open this long past their end: records up to this late still count,
    /// and a window fires once the watermark passes its end plus the lateness; records
    /// later still are dropped and counted (`JobReport::late_records`).
    pub fn allowed_lateness(mut self, lateness: Duration) -> Self {
        self.allowed_lateness = lateness.as_millis() as i64;
        self
    }

    /// Aggregates each (key, window) incrementally; a window's result is emitted once the
    /// watermark passes its end.
    pub fn aggregate<A: AggregateFunction<T>>(
        self,
        aggregate: A,
    ) -> DataStream<WindowResult<K, A::Out>> {
        let key = self.keyed.key.clone();
        let (windows, lateness) = (self.windows, self.allowed_lateness);
        let (plan, stage) = self.keyed.exchange(None);
        plan.borrow_mut().stages[stage].name += " → window";
        let aggregate = Arc::new(aggregate);
        DataStream {
            plan,
            stage,
            pipe: Arc::new(move |_ctx: &InstanceContext| {
                let key = key.clone();
                let op = WindowOp::new(
                    windows,
                    SharedAggregate(aggregate.clone()),
                    move |r: &T| key(r),
                    lateness,
                );
                Ok(Box::new(Chained::new(InputHead::<T>::new(), op))
                    as Box<dyn Pipe<WindowResult<K, A::Out>>>)
            }),
        }
    }
}

/// An aggregation shared by the instances of one process.
struct SharedAggregate<A>(Arc<A>);

impl<T, A: AggregateFunction<T>> AggregateFunction<T> for SharedAggregate<A> {
    type Acc = A::Acc;
    type Out = A::Out;
    fn create(&self) -> A::Acc {
        self.0.create()
    }
    fn add(&self, acc: &mut A::Acc, value: &T) {
        self.0.add(acc, value)
    }
    fn merge(&self, a: A::Acc, b: A::Acc) -> A::Acc {
        self.0.merge(a, b)
    }
    fn result(&self, acc: A::Acc) -> A::Out {
        self.0.result(acc)
    }
}

/// Two keyed streams feeding one operator.
pub struct ConnectedStreams<K, A, B> {
    left: KeyedStream<K, A>,
    right: KeyedStream<K, B>,
}

impl<K, A, B> ConnectedStreams<K, A, B>
where
    K: Hash + Eq + Ord + Clone + Serialize + DeserializeOwned + Send + 'static,
    A: Serialize + DeserializeOwned + Send + 'static,
    B: Serialize + DeserializeOwned + Send + 'static,
{
    /// Per-key logic over both streams' records, with state and timers.
    pub fn process<O, F>(self, function: F) -> DataStream<O>
    where
        O: Send + 'static,
        F: KeyedProcessFunction<K, Either<A, B>, O>,
    {
        let (left_key, right_key) = (self.left.key.clone(), self.right.key.clone());
        let (plan, stage) = self.left.exchange(None);
        let (_, same) = self.right.exchange(Some(stage));
        debug_assert_eq!(stage, same);
        plan.borrow_mut().stages[stage].name += " → co-process";
        let function = Arc::new(function);
        DataStream {
            plan,
            stage,
            pipe: Arc::new(move |_ctx: &InstanceContext| {
                let (left_key, right_key) = (left_key.clone(), right_key.clone());
                let op = KeyedProcessOp::new(function.clone(), move |r: &Either<A, B>| match r {
                    Either::Left(a) => left_key(a),
                    Either::Right(b) => right_key(b),
                });
                Ok(Box::new(Chained::new(TwoInputHead::<A, B>::new(), op)) as Box<dyn Pipe<O>>)
            }),
        }
    }
}
