//! RabbitMQ's list parameters for every list endpoint: `name` / `use_regex` filtering,
//! `sort` / `sort_reverse`, `columns`, and `page` / `page_size` pagination.
//!
//! Lists are built as JSON values first and shaped here, so every resource gets the same
//! behaviour. Without `page` the answer is a plain array; with it, RabbitMQ's page object
//! `{filtered_count, item_count, items, page, page_count, page_size, total_count}`.
//! Pure: no broker access.

use serde::Deserialize;
use serde_json::{Map, Value};

use super::error::{ApiError, ApiResult};

/// Largest `page_size` RabbitMQ accepts.
const MAX_PAGE_SIZE: u64 = 500;

/// The query string of a list request.
#[derive(Debug, Default, Deserialize)]
pub struct ListQuery {
    /// 1-based page; absent = no pagination.
    pub page: Option<String>,
    /// Items per page (default 100, at most 500).
    pub page_size: Option<String>,
    /// Filter on the `name` field: substring, or regular expression with `use_regex`.
    pub name: Option<String>,
    /// `true` to read `name` as a regular expression.
    pub use_regex: Option<String>,
    /// Field to sort by (dotted for nested fields, e.g. `message_stats.publish`).
    pub sort: Option<String>,
    /// `true` to reverse the order.
    pub sort_reverse: Option<String>,
    /// Comma-separated fields to keep.
    pub columns: Option<String>,
}

fn lookup<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(v, |v, k| v.get(k))
}

fn compare(a: Option<&Value>, b: Option<&Value>) -> std::cmp::Ordering {
    use std::cmp::Ordering::*;
    match (a, b) {
        (Some(Value::Number(x)), Some(Value::Number(y))) => {
            let (x, y) = (x.as_f64().unwrap_or(0.0), y.as_f64().unwrap_or(0.0));
            x.partial_cmp(&y).unwrap_or(Equal)
        }
        (Some(Value::String(x)), Some(Value::String(y))) => x.cmp(y),
        (Some(Value::Bool(x)), Some(Value::Bool(y))) => x.cmp(y),
        (None, Some(_)) => Less,
        (Some(_), None) => Greater,
        (Some(x), Some(y)) => x.to_string().cmp(&y.to_string()),
        (None, None) => Equal,
    }
}

/// Keeps only `columns` (dotted paths keep the nested field under its parents).
fn project(v: Value, columns: &[&str]) -> Value {
    let mut out = Value::Object(Map::new());
    for c in columns {
        let Some(found) = lookup(&v, c) else { continue };
        let mut at = &mut out;
        for p in c.split('.') {
            if !at.is_object() {
                *at = Value::Object(Map::new());
            }
            // Just made an object if it was not one.
            at = at
                .as_object_mut()
                .expect("object")
                .entry(p.to_string())
                .or_insert(Value::Null);
        }
        *at = found.clone();
    }
    out
}

fn truthy(s: &Option<String>) -> bool {
    s.as_deref().is_some_and(|s| s == "true")
}

fn number(s: &Option<String>, what: &str) -> ApiResult<Option<u64>> {
    match s {
        None => Ok(None),
        Some(s) => s
            .parse::<u64>()
            .map(Some)
            .map_err(|_| ApiError::bad_request(format!("{what} must be a positive integer"))),
    }
}

/// [`shape`] for a list whose JSON is costly to build (a queue's takes its lock): when the
/// order asked for is by name (the default), `items` (already in name order) are filtered
/// and paged by `name_of` first and only the page is turned into JSON, so a page of 100 out
/// of 100,000 queues costs 100. Other sort keys build every item, as [`shape`] needs.
///
/// # Errors
/// As [`shape`].
pub fn shape_by_name<T>(
    mut items: Vec<T>,
    name_of: impl Fn(&T) -> &str,
    to_json: impl Fn(&T) -> Value,
    q: &ListQuery,
) -> ApiResult<Value> {
    let by_name = q
        .sort
        .as_deref()
        .is_none_or(|s| s.is_empty() || s == "name");
    if !by_name || q.page.is_none() {
        return shape(items.iter().map(to_json).collect(), q);
    }
    let total = items.len();
    match q.name.as_deref().filter(|n| !n.is_empty()) {
        None => {}
        Some(pat) if truthy(&q.use_regex) => {
            let re = regex::Regex::new(pat)
                .map_err(|e| ApiError::bad_request(format!("invalid regex: {e}")))?;
            items.retain(|t| re.is_match(name_of(t)));
        }
        Some(pat) => {
            let pat = pat.to_lowercase();
            items.retain(|t| name_of(t).to_lowercase().contains(&pat));
        }
    }
    if q.sort.as_deref() == Some("name") {
        items.sort_by(|a, b| name_of(a).cmp(name_of(b)));
    }
    if truthy(&q.sort_reverse) {
        items.reverse();
    }
    let w = Window::of(q, items.len(), total)?;
    let chunk = items
        .iter()
        .skip(w.skip)
        .take(w.take)
        .map(to_json)
        .collect();
    w.envelope(chunk, q)
}

/// The page a query asks for, over a list of `filtered` items (`total` before filtering).
#[derive(Debug)]
pub struct Window {
    /// Items before the page.
    pub skip: usize,
    /// Items on a full page.
    pub take: usize,
    page: u64,
    page_size: u64,
    page_count: u64,
    filtered: u64,
    total: u64,
}

impl Window {
    /// The window of `q`'s page.
    ///
    /// # Errors
    /// 400 for a bad number or a page out of range.
    pub fn of(q: &ListQuery, filtered: usize, total: usize) -> ApiResult<Self> {
        let page = number(&q.page, "page")?.unwrap_or(1);
        let page_size = number(&q.page_size, "page_size")?.unwrap_or(100);
        if page_size == 0 || page_size > MAX_PAGE_SIZE {
            return Err(ApiError::bad_request(format!(
                "page_size must be between 1 and {MAX_PAGE_SIZE}"
            )));
        }
        let filtered = filtered as u64;
        let page_count = filtered.div_ceil(page_size).max(1);
        if page == 0 || page > page_count {
            return Err(ApiError::bad_request("page out of range"));
        }
        Ok(Self {
            skip: ((page - 1) * page_size) as usize,
            take: page_size as usize,
            page,
            page_size,
            page_count,
            filtered,
            total: total as u64,
        })
    }

    /// When `q` asks for a page of a list in its natural order (by name, in which
    /// `ordered` lists are kept) with no filter, the list can be paged before it is read:
    /// this says so. `sort=name` keeps the natural order only for one source (one vhost).
    pub fn natural(q: &ListQuery, one_source: bool) -> bool {
        let sort = q.sort.as_deref().filter(|s| !s.is_empty());
        q.page.is_some()
            && q.name.as_deref().is_none_or(str::is_empty)
            && (sort.is_none() || (sort == Some("name") && one_source))
    }

    /// Whether `q` reverses the order.
    pub fn reverse(q: &ListQuery) -> bool {
        truthy(&q.sort_reverse)
    }

    /// RabbitMQ's page object around `chunk` (this window's items, columns applied here).
    ///
    /// # Errors
    /// As [`shape`].
    pub fn envelope(&self, chunk: Vec<Value>, q: &ListQuery) -> ApiResult<Value> {
        // The page is shaped by `shape` itself (columns), with the counts of the whole list.
        let inner = ListQuery {
            columns: q.columns.clone(),
            ..Default::default()
        };
        let chunk = shape(chunk, &inner)?;
        Ok(serde_json::json!({
            "filtered_count": self.filtered,
            "item_count": chunk.as_array().map_or(0, Vec::len),
            "items": chunk,
            "page": self.page,
            "page_count": self.page_count,
            "page_size": self.page_size,
            "total_count": self.total,
        }))
    }
}

/// Filters, sorts, projects and pages `items`.
///
/// # Errors
/// 400 for a bad number, a bad regular expression, or a page out of range.
pub fn shape(items: Vec<Value>, q: &ListQuery) -> ApiResult<Value> {
    let total = items.len() as u64;
    let page = number(&q.page, "page")?;
    let page_size = number(&q.page_size, "page_size")?.unwrap_or(100);
    if page.is_some() && (page_size == 0 || page_size > MAX_PAGE_SIZE) {
        return Err(ApiError::bad_request(format!(
            "page_size must be between 1 and {MAX_PAGE_SIZE}"
        )));
    }
    let mut items = match q.name.as_deref().filter(|n| !n.is_empty()) {
        None => items,
        Some(pat) if truthy(&q.use_regex) => {
            let re = regex::Regex::new(pat)
                .map_err(|e| ApiError::bad_request(format!("invalid regex: {e}")))?;
            items
                .into_iter()
                .filter(|v| {
                    lookup(v, "name")
                        .and_then(Value::as_str)
                        .is_some_and(|n| re.is_match(n))
                })
                .collect()
        }
        Some(pat) => {
            let pat = pat.to_lowercase();
            items
                .into_iter()
                .filter(|v| {
                    lookup(v, "name")
                        .and_then(Value::as_str)
                        .is_some_and(|n| n.to_lowercase().contains(&pat))
                })
                .collect()
        }
    };
    if let Some(key) = q.sort.as_deref().filter(|s| !s.is_empty()) {
        items.sort_by(|a, b| compare(lookup(a, key), lookup(b, key)));
    }
    if truthy(&q.sort_reverse) {
        items.reverse();
    }
    if let Some(cols) = q.columns.as_deref().filter(|c| !c.is_empty()) {
        let cols: Vec<&str> = cols.split(',').map(str::trim).collect();
        items = items.into_iter().map(|v| project(v, &cols)).collect();
    }
    let Some(page) = page else {
        return Ok(Value::Array(items));
    };
    let filtered = items.len() as u64;
    let page_count = filtered.div_ceil(page_size).max(1);
    if page == 0 || page > page_count {
        return Err(ApiError::bad_request("page out of range"));
    }
    let start = ((page - 1) * page_size) as usize;
    let chunk: Vec<Value> = items
        .into_iter()
        .skip(start)
        .take(page_size as usize)
        .collect();
    Ok(serde_json::json!({
        "filtered_count": filtered,
        "item_count": chunk.len(),
        "items": chunk,
        "page": page,
        "page_count": page_count,
        "page_size": page_size,
        "total_count": total,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn q(page: Option<&str>, name: Option<&str>, regex: bool) -> ListQuery {
        ListQuery {
            page: page.map(Into::into),
            page_size: Some("2".into()),
            name: name.map(Into::into),
            use_regex: regex.then(|| "true".into()),
            ..Default::default()
        }
    }

    #[test]
    fn pages_filters_and_projects_as_rabbitmq() {
        let items: Vec<Value> = ["a1", "a2", "b1"]
            .iter()
            .map(|n| json!({"name": n, "messages": 1, "x": {"y": 2}}))
            .collect();
        let page = shape(items.clone(), &q(Some("2"), None, false)).unwrap();
        assert_eq!(
            page["items"],
            json!([{"name": "b1", "messages": 1, "x": {"y": 2}}])
        );
        assert_eq!(page["page_count"], 2);
        assert_eq!(page["total_count"], 3);
        let page = shape(items.clone(), &q(Some("1"), Some("^a"), true)).unwrap();
        assert_eq!(page["filtered_count"], 2);
        let plain = shape(items.clone(), &q(None, Some("A"), false)).unwrap();
        assert_eq!(plain.as_array().unwrap().len(), 2);
        let cols = ListQuery {
            columns: Some("name,x.y".into()),
            sort: Some("name".into()),
            sort_reverse: Some("true".into()),
            ..Default::default()
        };
        let v = shape(items.clone(), &cols).unwrap();
        assert_eq!(v[0], json!({"name": "b1", "x": {"y": 2}}));
        assert!(shape(items, &q(Some("3"), None, false)).is_err());
    }

    #[test]
    fn paging_by_name_before_building_json_answers_as_shape_does() {
        let names = ["a1", "a2", "b1", "b2", "c1"];
        let to_json = |n: &&str| json!({"name": n, "messages": n.len()});
        let all: Vec<Value> = names.iter().map(to_json).collect();
        for query in [
            q(Some("2"), None, false),
            q(Some("1"), Some("^b"), true),
            q(Some("1"), Some("A"), false),
            ListQuery {
                page: Some("1".into()),
                sort: Some("name".into()),
                sort_reverse: Some("true".into()),
                columns: Some("name".into()),
                ..Default::default()
            },
        ] {
            let lazy = shape_by_name(names.to_vec(), |n| n, to_json, &query).unwrap();
            assert_eq!(lazy, shape(all.clone(), &query).unwrap(), "{query:?}");
        }
    }
}
