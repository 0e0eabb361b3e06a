//! The Nexmark queries, written with the public API, and an exact reference answer for
//! each computed by a plain loop over the same events (what the tests and the example
//! check the dataflow against).
//!
//! - q0 pass-through: every bid;
//! - q1 currency conversion: bids with the price in euros (× 0.908);
//! - q2 selection: bids on auctions whose id is a multiple of 123;
//! - q3 local item suggestion: sellers in OR, ID or CA joined with their auctions in
//!   category 10 (an incremental join on keyed state);
//! - q5 hot items: per 10 s window sliding every 2 s, the auctions with the most bids;
//! - q7 highest bid: per 10 s tumbling window, the bids with the highest price;
//! - q8 monitor new users: people who opened an auction in the same 10 s window they
//!   registered in (a windowed join on keyed state with timers).

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::Duration;

pub use ::nexmark::event::{Auction, Bid, Event, Person};
use serde::{Deserialize, Serialize};

use crate::aggregate::{Count, MaxBy};
use crate::graph::{DataStream, StreamEnv};
use crate::operators::{BoundedOutOfOrder, KeyedProcessFunction, ProcessContext};
use crate::pipe::Either;
use crate::sink::{DiscardSink, FileSink};
use crate::source::NexmarkSource;
use crate::window::{Sliding, Tumbling, WindowResult};
use crate::StreamJob;

/// The queries implemented.
pub const QUERIES: [Query; 7] = [
    Query::Q0,
    Query::Q1,
    Query::Q2,
    Query::Q3,
    Query::Q5,
    Query::Q7,
    Query::Q8,
];

/// A Nexmark query.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Query {
    Q0,
    Q1,
    Q2,
    Q3,
    Q5,
    Q7,
    Q8,
}

impl Query {
    /// `q5` → `Query::Q5`.
    pub fn parse(name: &str) -> Option<Query> {
        QUERIES
            .iter()
            .copied()
            .find(|q| q.name().eq_ignore_ascii_case(name.trim()))
    }

    /// `q5`.
    pub fn name(&self) -> &'static str {
        match self {
            Query::Q0 => "q0",
            Query::Q1 => "q1",
            Query::Q2 => "q2",
            Query::Q3 => "q3",
            Query::Q5 => "q5",
            Query::Q7 => "q7",
            Query::Q8 => "q8",
        }
    }
}

/// Where a query's results go.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Output {
    /// Counted and dropped (benchmarks).
    Discard,
    /// JSON lines, committed exactly once, under this directory.
    Files(PathBuf),
}

/// A Nexmark query as a job.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NexmarkJob {
    /// Which query.
    pub query: Query,
    /// The events.
    pub source: NexmarkSource,
    /// Where results go.
    pub output: Output,
    /// How far out of order events may be (the watermark's delay).
    pub out_of_orderness: Duration,
}

impl NexmarkJob {
    /// `query` over `source`, results to `output`, events at most 1 s out of order.
    pub fn new(query: Query, source: NexmarkSource, output: Output) -> NexmarkJob {
        NexmarkJob {
            query,
            source,
            output,
            out_of_orderness: Duration::from_secs(1),
        }
    }
}

crate::register_stream_job!(NexmarkJob);

/// q1's output.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EuroBid {
    pub auction: usize,
    pub bidder: usize,
    /// Euro cents: dollars × 0.908, rounded down.
    pub price: usize,
    pub date_time: u64,
}

/// q2's output.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AuctionPrice {
    pub auction: usize,
    pub price: usize,
}

/// q3's output.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LocalItem {
    pub name: String,
    pub city: String,
    pub state: String,
    pub auction: usize,
}

/// q5's output: an auction with the most bids of its window.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HotItem {
    pub window_start: i64,
    pub window_end: i64,
    pub auction: usize,
    pub bids: u64,
}

/// q7's output: a bid with the highest price of its window.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HighestBid {
    pub window_end: i64,
    pub auction: usize,
    pub bidder: usize,
    pub price: usize,
    pub date_time: u64,
}

/// q8's output.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NewUser {
    pub id: usize,
    pub name: String,
    pub window_start: i64,
}

const WINDOW: Duration = Duration::from_secs(10);
const SLIDE: Duration = Duration::from_secs(2);
const WINDOW_MS: i64 = 10_000;
const SLIDE_MS: i64 = 2_000;

fn bids(env: &mut StreamEnv, job: &NexmarkJob) -> DataStream<Bid> {
    env.source(job.source.clone())
        .filter_map(|event| match event {
            Event::Bid(bid) => Some(bid),
            _ => None,
        })
        .assign_timestamps(
            |bid| bid.date_time as i64,
            BoundedOutOfOrder(job.out_of_orderness),
        )
}

fn finish<T: Serialize + Send + 'static>(stream: DataStream<T>, output: &Output) {
    match output {
        Output::Discard => stream.sink(DiscardSink),
        Output::Files(dir) => stream.sink(FileSink::transactional(dir.clone())),
    }
}

impl StreamJob for NexmarkJob {
    fn build(&self, env: &mut StreamEnv) {
        match self.query {
            Query::Q0 => finish(bids(env, self), &self.output),
            Query::Q1 => finish(
                bids(env, self).map(|bid| EuroBid {
                    auction: bid.auction,
                    bidder: bid.bidder,
                    price: bid.price * 908 / 1000,
                    date_time: bid.date_time,
                }),
                &self.output,
            ),
            Query::Q2 => finish(
                bids(env, self).filter_map(|bid| {
                    (bid.auction % 123 == 0).then_some(AuctionPrice {
                        auction: bid.auction,
                        price: bid.price,
                    })
                }),
                &self.output,
            ),
            Query::Q3 => {
                let people_and_auctions =
                    env.source(self.source.clone())
                        .filter_map(|event| match event {
                            Event::Person(p) if matches!(p.state.as_str(), "or" | "id" | "ca") => {
                                Some(Either::Left(p))
                            }
                            Event::Auction(a) if a.category == 10 => Some(Either::Right(a)),
                            _ => None,
                        });
                finish(
                    people_and_auctions
                        .key_by(|record: &Either<Person, Auction>| match record {
                            Either::Left(p) => p.id,
                            Either::Right(a) => a.seller,
                        })
                        .process(LocalItemJoin),
                    &self.output,
                )
            }
            Query::Q5 => {
                let counts = bids(env, self)
                    .map(|bid| bid.auction)
                    .key_by(|auction: &usize| *auction)
                    .window(Sliding::of(WINDOW).every(SLIDE))
                    .aggregate(Count);
                finish(
                    counts
                        .key_by(|r: &WindowResult<usize, u64>| r.end)
                        .process(TopPerWindow),
                    &self.output,
                )
            }
            Query::Q7 => {
                let local = bids(env, self)
                    .map(|bid| HighestBid {
                        window_end: 0,
                        auction: bid.auction,
                        bidder: bid.bidder,
                        price: bid.price,
                        date_time: bid.date_time,
                    })
                    // Pre-aggregated per auction: the global step sees a few records per
                    // window instead of every bid.
                    .key_by(|bid: &HighestBid| bid.auction)
                    .window(Tumbling::of(WINDOW))
                    .aggregate(MaxBy(|bid: &HighestBid| bid.price as i64));
                finish(
                    local
                        .key_by(|r: &WindowResult<usize, (i64, Vec<HighestBid>)>| r.end)
                        .process(HighestPerWindow),
                    &self.output,
                )
            }
            Query::Q8 => {
                let stream = env
                    .source(self.source.clone())
                    .filter_map(|event| match event {
                        Event::Person(p) => Some(Either::Left((p.id, p.name, p.date_time))),
                        Event::Auction(a) => Some(Either::Right((a.seller, a.date_time))),
                        Event::Bid(_) => None,
                    })
                    .assign_timestamps(
                        |r: &Either<(usize, String, u64), (usize, u64)>| match r {
                            Either::Left(p) => p.2 as i64,
                            Either::Right(a) => a.1 as i64,
                        },
                        BoundedOutOfOrder(self.out_of_orderness),
                    );
                finish(
                    stream
                        .key_by(|r: &Either<(usize, String, u64), (usize, u64)>| match r {
                            Either::Left(p) => p.0,
                            Either::Right(a) => a.0,
                        })
                        .process(NewUsers),
                    &self.output,
                )
            }
        }
    }
}

/// q3's join: a seller's details, and auctions that arrived before them.
#[derive(Default, Serialize, Deserialize)]
pub struct LocalItemState {
    seller: Option<(String, String, String)>,
    waiting: Vec<usize>,
}

struct LocalItemJoin;

impl KeyedProcessFunction<usize, Either<Person, Auction>, LocalItem> for LocalItemJoin {
    type State = LocalItemState;

    fn process(
        &self,
        _key: &usize,
        value: Either<Person, Auction>,
        state: &mut LocalItemState,
        ctx: &mut ProcessContext<LocalItem>,
    ) {
        match value {
            Either::Left(person) => {
                for auction in state.waiting.drain(..) {
                    ctx.emit(LocalItem {
                        name: person.name.clone(),
                        city: person.city.clone(),
                        state: person.state.clone(),
                        auction,
                    });
                }
                state.seller = Some((person.name, person.city, person.state));
            }
            Either::Right(auction) => match &state.seller {
                Some((name, city, st)) => ctx.emit(LocalItem {
                    name: name.clone(),
                    city: city.clone(),
                    state: st.clone(),
                    auction: auction.id,
                }),
                None => state.waiting.push(auction.id),
            },
        }
    }
}

/// q5's second step: per window (the key), the auctions with the largest count.
#[derive(Default, Serialize, Deserialize)]
pub struct TopState {
    best: u64,
    auctions: Vec<usize>,
    start: i64,
}

struct TopPerWindow;

impl KeyedProcessFunction<i64, WindowResult<usize, u64>, HotItem> for TopPerWindow {
    type State = TopState;

    fn process(
        &self,
        end: &i64,
        value: WindowResult<usize, u64>,
        state: &mut TopState,
        ctx: &mut ProcessContext<HotItem>,
    ) {
        if state.auctions.is_empty() || value.value > state.best {
            state.best = value.value;
            state.auctions.clear();
            ctx.register_event_timer(end - 1);
        }
        if value.value == state.best {
            state.auctions.push(value.key);
        }
        state.start = value.start;
    }

    fn on_timer(
        &self,
        end: &i64,
        _time: i64,
        state: &mut TopState,
        ctx: &mut ProcessContext<HotItem>,
    ) {
        for auction in state.auctions.drain(..) {
            ctx.emit(HotItem {
                window_start: state.start,
                window_end: *end,
                auction,
                bids: state.best,
            });
        }
        ctx.clear_state();
    }
}

/// q7's second step: per window (the key), the bids with the highest price.
#[derive(Default, Serialize, Deserialize)]
pub struct HighestState {
    best: i64,
    bids: Vec<HighestBid>,
}

struct HighestPerWindow;

impl KeyedProcessFunction<i64, WindowResult<usize, (i64, Vec<HighestBid>)>, HighestBid>
    for HighestPerWindow
{
    type State = HighestState;

    fn process(
        &self,
        end: &i64,
        value: WindowResult<usize, (i64, Vec<HighestBid>)>,
        state: &mut HighestState,
        ctx: &mut ProcessContext<HighestBid>,
    ) {
        let (price, bids) = value.value;
        if state.bids.is_empty() || price > state.best {
            state.best = price;
            state.bids.clear();
            ctx.register_event_timer(end - 1);
        }
        if price == state.best {
            state.bids.extend(bids);
        }
    }

    fn on_timer(
        &self,
        end: &i64,
        _time: i64,
        state: &mut HighestState,
        ctx: &mut ProcessContext<HighestBid>,
    ) {
        for mut bid in state.bids.drain(..) {
            bid.window_end = *end;
            ctx.emit(bid);
        }
        ctx.clear_state();
    }
}

/// q8: per person, the windows they registered in and the windows they sold in.
#[derive(Default, Serialize, Deserialize)]
pub struct NewUserState {
    /// Window start → (name if they registered in it, whether they opened an auction).
    windows: BTreeMap<i64, (Option<String>, bool)>,
}

struct NewUsers;

type PersonOrSeller = Either<(usize, String, u64), (usize, u64)>;

impl KeyedProcessFunction<usize, PersonOrSeller, NewUser> for NewUsers {
    type State = NewUserState;

    fn process(
        &self,
        _id: &usize,
        value: PersonOrSeller,
        state: &mut NewUserState,
        ctx: &mut ProcessContext<NewUser>,
    ) {
        let ts = ctx.timestamp();
        let start = ts - ts.rem_euclid(WINDOW_MS);
        let slot = state.windows.entry(start).or_default();
        match value {
            Either::Left((_, name, _)) => slot.0 = Some(name),
            Either::Right(_) => slot.1 = true,
        }
        ctx.register_event_timer(start + WINDOW_MS - 1);
    }

    fn on_timer(
        &self,
        id: &usize,
        time: i64,
        state: &mut NewUserState,
        ctx: &mut ProcessContext<NewUser>,
    ) {
        let start = time + 1 - WINDOW_MS;
        if let Some((Some(name), true)) = state.windows.remove(&start) {
            ctx.emit(NewUser {
                id: *id,
                name,
                window_start: start,
            });
        }
        if state.windows.is_empty() {
            ctx.clear_state();
        }
    }
}

/// The exact answer of `query` over every event of `source`, as sorted JSON lines (the
/// form the file sink writes, sorted).
pub fn reference(query: Query, source: &NexmarkSource) -> Vec<String> {
    let line = |v: &dyn erased::Json| v.json();
    let mut lines: Vec<String> = Vec::new();
    let events = source.all_events();
    match query {
        Query::Q0 => {
            for event in events {
                if let Event::Bid(bid) = event {
                    lines.push(line(&bid));
                }
            }
        }
        Query::Q1 => {
            for event in events {
                if let Event::Bid(bid) = event {
                    lines.push(line(&EuroBid {
                        auction: bid.auction,
                        bidder: bid.bidder,
                        price: bid.price * 908 / 1000,
                        date_time: bid.date_time,
                    }));
                }
            }
        }
        Query::Q2 => {
            for event in events {
                if let Event::Bid(bid) = event {
                    if bid.auction % 123 == 0 {
                        lines.push(line(&AuctionPrice {
                            auction: bid.auction,
                            price: bid.price,
                        }));
                    }
                }
            }
        }
        Query::Q3 => {
            let mut people: HashMap<usize, Person> = HashMap::new();
            let mut auctions: Vec<Auction> = Vec::new();
            for event in events {
                match event {
                    Event::Person(p) if matches!(p.state.as_str(), "or" | "id" | "ca") => {
                        people.insert(p.id, p);
                    }
                    Event::Auction(a) if a.category == 10 => auctions.push(a),
                    _ => {}
                }
            }
            for auction in auctions {
                if let Some(p) = people.get(&auction.seller) {
                    lines.push(line(&LocalItem {
                        name: p.name.clone(),
                        city: p.city.clone(),
                        state: p.state.clone(),
                        auction: auction.id,
                    }));
                }
            }
        }
        Query::Q5 => {
            let mut counts: BTreeMap<i64, HashMap<usize, u64>> = BTreeMap::new();
            for event in events {
                if let Event::Bid(bid) = event {
                    let ts = bid.date_time as i64;
                    let mut start = ts - ts.rem_euclid(SLIDE_MS);
                    while start > ts - WINDOW_MS {
                        *counts
                            .entry(start)
                            .or_default()
                            .entry(bid.auction)
                            .or_default() += 1;
                        start -= SLIDE_MS;
                    }
                }
            }
            for (start, per_auction) in counts {
                let best = per_auction.values().copied().max().unwrap_or(0);
                for (auction, bids) in per_auction {
                    if bids == best {
                        lines.push(line(&HotItem {
                            window_start: start,
                            window_end: start + WINDOW_MS,
                            auction,
                            bids,
                        }));
                    }
                }
            }
        }
        Query::Q7 => {
            let mut best: BTreeMap<i64, Vec<Bid>> = BTreeMap::new();
            for event in events {
                if let Event::Bid(bid) = event {
                    let ts = bid.date_time as i64;
                    let end = ts - ts.rem_euclid(WINDOW_MS) + WINDOW_MS;
                    let slot = best.entry(end).or_default();
                    if slot.first().is_some_and(|b| bid.price > b.price) {
                        slot.clear();
                    }
                    if slot.first().is_none_or(|b| bid.price == b.price) {
                        slot.push(bid);
                    }
                }
            }
            for (end, bids) in best {
                for bid in bids {
                    lines.push(line(&HighestBid {
                        window_end: end,
                        auction: bid.auction,
                        bidder: bid.bidder,
                        price: bid.price,
                        date_time: bid.date_time,
                    }));
                }
            }
        }
        Query::Q8 => {
            let mut registered: HashMap<(usize, i64), String> = HashMap::new();
            let mut sold: std::collections::HashSet<(usize, i64)> = Default::default();
            for event in events {
                match event {
                    Event::Person(p) => {
                        let ts = p.date_time as i64;
                        registered.insert((p.id, ts - ts.rem_euclid(WINDOW_MS)), p.name);
                    }
                    Event::Auction(a) => {
                        let ts = a.date_time as i64;
                        sold.insert((a.seller, ts - ts.rem_euclid(WINDOW_MS)));
                    }
                    Event::Bid(_) => {}
                }
            }
            for ((id, start), name) in registered {
                if sold.contains(&(id, start)) {
                    lines.push(line(&NewUser {
                        id,
                        name,
                        window_start: start,
                    }));
                }
            }
        }
    }
    lines.sort();
    lines
}

mod erased {
    /// A value written as the file sink writes it.
    pub trait Json {
        fn json(&self) -> String;
    }

    impl<T: serde::Serialize> Json for T {
        fn json(&self) -> String {
            serde_json::to_string(self).unwrap_or_default()
        }
    }
}
