//! The adapter to differential dataflow: one timely worker on a thread of its own holds the
//! declared queries' dataflow, takes source updates (with their logical time) and returns
//! each query's answer changes once they are final (all times before the new frontier).
//!
//! Source rows arrive as upserts and deletes by key ([`crate::cdc`]); [`Tables`] keeps each
//! table's current rows so an upsert becomes "remove the old row, insert the new one", which
//! is what a differential input wants.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::mpsc;
use std::thread::JoinHandle;

use differential_dataflow::input::InputSession;
use timely::dataflow::operators::probe::Handle;

use crate::cdc::SourceChange;
use crate::error::{Error, Result};
use crate::model::{Customer, Order, Pk, Product, Review, SourceRow, Table};
use crate::query::{Inputs, Params, Query, Time};
use crate::row::Row;

/// One change of a source collection: a row in (+1) or out (-1).
#[derive(Debug, Clone)]
pub struct Update {
    pub row: SourceRow,
    pub diff: isize,
}

/// One change of a query's answer at a time before the frontier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnswerUpdate {
    pub query: usize,
    pub key: String,
    pub row: Row,
    pub time: Time,
    pub diff: isize,
}

enum Command {
    Step {
        time: Time,
        updates: Vec<Update>,
        reply: mpsc::Sender<Vec<AnswerUpdate>>,
    },
}

/// The running dataflow.
pub struct Engine {
    commands: Option<mpsc::Sender<Command>>,
    worker: Option<JoinHandle<()>>,
    last: Option<Time>,
}

impl Engine {
    /// Starts a worker maintaining `queries` (their index in the slice names them in
    /// [`AnswerUpdate::query`]).
    pub fn start(queries: &'static [Query], params: Params) -> Self {
        let (tx, rx) = mpsc::channel::<Command>();
        let worker = std::thread::Builder::new()
            .name("queries-dataflow".into())
            .spawn(move || run_worker(queries, params, rx))
            .expect("spawn the dataflow thread");
        Self {
            commands: Some(tx),
            worker: Some(worker),
            last: None,
        }
    }

    /// Applies `updates` at `time` (raised to after the previous step's time if it is not)
    /// and advances every input past it. Returns the answer changes that became final: those
    /// of this step and of earlier scheduled times (temporal filters) up to it, in time order.
    pub fn step(&mut self, time: Time, updates: Vec<Update>) -> Result<Vec<AnswerUpdate>> {
        let time = match self.last {
            Some(last) if time <= last => last + 1,
            _ => time,
        };
        self.last = Some(time);
        let (reply, answer) = mpsc::channel();
        self.commands
            .as_ref()
            .ok_or(Error::EngineStopped)?
            .send(Command::Step {
                time,
                updates,
                reply,
            })
            .map_err(|_| Error::EngineStopped)?;
        answer.recv().map_err(|_| Error::EngineStopped)
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.commands.take();
        if let Some(worker) = self.worker.take() {
            let _ = worker.join();
        }
    }
}

fn run_worker(queries: &'static [Query], params: Params, commands: mpsc::Receiver<Command>) {
    // `execute_directly` wants a closure it could share; the receiver is only ever used here.
    let commands = std::sync::Mutex::new(commands);
    timely::execute_directly(move |worker| {
        let commands = commands.lock().unwrap_or_else(|p| p.into_inner());
        let mut products = InputSession::<Time, Product, isize>::new();
        let mut customers = InputSession::<Time, Customer, isize>::new();
        let mut orders = InputSession::<Time, Order, isize>::new();
        let mut reviews = InputSession::<Time, Review, isize>::new();
        let sink: Rc<RefCell<Vec<AnswerUpdate>>> = Rc::default();
        let probe = Handle::new();
        worker.dataflow::<Time, _, _>(|scope| {
            let inputs = Inputs {
                products: products.to_collection(scope),
                customers: customers.to_collection(scope),
                orders: orders.to_collection(scope),
                reviews: reviews.to_collection(scope),
                params,
            };
            for (index, query) in queries.iter().enumerate() {
                let sink = sink.clone();
                (query.build)(&inputs)
                    .consolidate()
                    .inspect(move |((key, row), time, diff)| {
                        sink.borrow_mut().push(AnswerUpdate {
                            query: index,
                            key: key.clone(),
                            row: row.clone(),
                            time: *time,
                            diff: *diff,
                        })
                    })
                    .probe_with(&probe);
            }
        });
        while let Ok(Command::Step {
            time,
            updates,
            reply,
        }) = commands.recv()
        {
            products.advance_to(time);
            customers.advance_to(time);
            orders.advance_to(time);
            reviews.advance_to(time);
            for Update { row, diff } in updates {
                match row {
                    SourceRow::Product(p) => products.update(p, diff),
                    SourceRow::Customer(c) => customers.update(c, diff),
                    SourceRow::Order(o) => orders.update(o, diff),
                    SourceRow::Review(r) => reviews.update(r, diff),
                }
            }
            let next = time + 1;
            products.advance_to(next);
            customers.advance_to(next);
            orders.advance_to(next);
            reviews.advance_to(next);
            products.flush();
            customers.flush();
            orders.flush();
            reviews.flush();
            worker.step_while(|| probe.less_than(&next));
            let mut released = std::mem::take(&mut *sink.borrow_mut());
            released.sort_by_key(|u| (u.time, u.query, u.diff));
            if reply.send(released).is_err() {
                break;
            }
        }
    });
}

/// The current rows of every source table, by primary key.
#[derive(Default)]
pub struct Tables {
    rows: HashMap<Table, HashMap<Pk, SourceRow>>,
}

impl Tables {
    /// The collection updates that turn the tables' state into the state after `change`.
    pub fn apply(&mut self, table: Table, change: SourceChange, out: &mut Vec<Update>) {
        let rows = self.rows.entry(table).or_default();
        match change {
            SourceChange::Upsert(row) => {
                let old = rows.insert(row.pk(), row.clone());
                if old.as_ref() == Some(&row) {
                    return;
                }
                if let Some(old) = old {
                    out.push(Update { row: old, diff: -1 });
                }
                out.push(Update { row, diff: 1 });
            }
            SourceChange::Delete(pk) => {
                if let Some(old) = rows.remove(&pk) {
                    out.push(Update { row: old, diff: -1 });
                }
            }
            SourceChange::Truncate => {
                out.extend(rows.drain().map(|(_, row)| Update { row, diff: -1 }));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::declared::{ALL, DELAYED_GOLD_ORDERS, LOW_STOCK, PRODUCT_CATALOGUE};
    use crate::model::{OrderStatus, Tier};
    use crate::row::Cell;

    fn index(name: &str) -> usize {
        ALL.iter().position(|q| q.name == name).unwrap()
    }

    fn product(stock: i64) -> SourceRow {
        SourceRow::Product(Product {
            id: 1,
            name: "Tent".into(),
            price: "10.00".into(),
            stock,
        })
    }

    fn of(updates: &[AnswerUpdate], query: &str) -> Vec<(String, isize)> {
        updates
            .iter()
            .filter(|u| u.query == index(query))
            .map(|u| (u.key.clone(), u.diff))
            .collect()
    }

    #[test]
    fn catalogue_averages_reviews_and_stock_enters_and_leaves() {
        let mut engine = Engine::start(
            ALL,
            Params {
                gold_order_delay_ms: 1000,
            },
        );
        let mut tables = Tables::default();
        let mut updates = Vec::new();
        tables.apply(
            Table::Products,
            SourceChange::Upsert(product(25)),
            &mut updates,
        );
        let out = engine.step(10, std::mem::take(&mut updates)).unwrap();
        let catalogue: Vec<_> = out
            .iter()
            .filter(|u| u.query == index(PRODUCT_CATALOGUE.name))
            .collect();
        assert_eq!(catalogue.len(), 1);
        assert_eq!(catalogue[0].row[4], Cell::Long(0));
        assert_eq!(catalogue[0].row[5], Cell::Null);
        for (id, rating) in [(1, 4), (2, 5)] {
            let review = SourceRow::Review(Review {
                id,
                product_id: 1,
                rating,
            });
            tables.apply(Table::Reviews, SourceChange::Upsert(review), &mut updates);
        }
        let out = engine.step(11, std::mem::take(&mut updates)).unwrap();
        let added = out.iter().find(|u| u.diff > 0).unwrap();
        assert_eq!(added.row[4], Cell::Long(2));
        assert_eq!(added.row[5], Cell::Double(4.5));

        tables.apply(
            Table::Products,
            SourceChange::Upsert(product(15)),
            &mut updates,
        );
        let out = engine.step(12, std::mem::take(&mut updates)).unwrap();
        assert_eq!(of(&out, LOW_STOCK.name), vec![("1".into(), 1)]);
        tables.apply(
            Table::Products,
            SourceChange::Upsert(product(12)),
            &mut updates,
        );
        let out = engine.step(13, std::mem::take(&mut updates)).unwrap();
        assert_eq!(of(&out, LOW_STOCK.name), vec![], "no change while inside");
        tables.apply(
            Table::Products,
            SourceChange::Upsert(product(25)),
            &mut updates,
        );
        let out = engine.step(14, std::mem::take(&mut updates)).unwrap();
        assert_eq!(of(&out, LOW_STOCK.name), vec![("1".into(), -1)]);
    }

    /// An engine with a 1 s Gold-order delay, and Gold customer 7's order "o1" (processing,
    /// created at 10 s) applied to its tables but not yet stepped.
    fn a_gold_order_placed_at_10s() -> (Engine, Tables, Vec<Update>, Order) {
        let engine = Engine::start(
            ALL,
            Params {
                gold_order_delay_ms: 1000,
            },
        );
        let mut tables = Tables::default();
        let mut updates = Vec::new();
        let customer = Customer {
            id: 7,
            name: "Ann".into(),
            tier: Tier::Gold,
        };
        tables.apply(
            Table::Customers,
            SourceChange::Upsert(SourceRow::Customer(customer)),
            &mut updates,
        );
        let order = Order {
            id: "o1".into(),
            customer_id: 7,
            product_id: 1,
            quantity: 1,
            status: OrderStatus::Processing,
            created_ms: 10_000,
        };
        tables.apply(
            Table::Orders,
            SourceChange::Upsert(SourceRow::Order(order.clone())),
            &mut updates,
        );
        (engine, tables, updates, order)
    }

    #[test]
    fn a_gold_order_becomes_delayed_when_time_passes_and_leaves_when_shipped() {
        let (mut engine, mut tables, mut updates, mut order) = a_gold_order_placed_at_10s();
        let out = engine.step(10_100, std::mem::take(&mut updates)).unwrap();
        assert_eq!(of(&out, DELAYED_GOLD_ORDERS.name), vec![]);
        // No data change; only the clock moves.
        let out = engine.step(10_900, Vec::new()).unwrap();
        assert_eq!(of(&out, DELAYED_GOLD_ORDERS.name), vec![]);
        let out = engine.step(11_001, Vec::new()).unwrap();
        assert_eq!(of(&out, DELAYED_GOLD_ORDERS.name), vec![("o1".into(), 1)]);
        order.status = OrderStatus::Shipped;
        tables.apply(
            Table::Orders,
            SourceChange::Upsert(SourceRow::Order(order)),
            &mut updates,
        );
        let out = engine.step(12_000, std::mem::take(&mut updates)).unwrap();
        assert_eq!(of(&out, DELAYED_GOLD_ORDERS.name), vec![("o1".into(), -1)]);
    }

    #[test]
    fn an_order_shipped_before_its_delay_never_shows() {
        let (mut engine, mut tables, mut updates, mut order) = a_gold_order_placed_at_10s();
        engine.step(10_100, std::mem::take(&mut updates)).unwrap();
        order.status = OrderStatus::Shipped;
        tables.apply(
            Table::Orders,
            SourceChange::Upsert(SourceRow::Order(order)),
            &mut updates,
        );
        let out = engine.step(10_500, std::mem::take(&mut updates)).unwrap();
        assert_eq!(of(&out, DELAYED_GOLD_ORDERS.name), vec![]);
        let out = engine.step(20_000, Vec::new()).unwrap();
        assert_eq!(of(&out, DELAYED_GOLD_ORDERS.name), vec![]);
    }
}
