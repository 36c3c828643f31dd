//! Rule conditions: CEL expressions over `request.*`, `features.*` and `score.*`, checked
//! against the schema when they are loaded, split into their top-level conjuncts, and
//! evaluated cheapest first — simple comparisons of one field with a literal natively, the
//! rest by the CEL interpreter in a scope of the event's values.

use std::collections::HashMap;
use std::sync::Arc;

use cel::common::ast::{Expr, IdedExpr, LiteralValue};
use cel::objects::{Key, Map};
use cel::{Context, Program, Value};

use crate::input::Input;

/// Longest condition accepted, in bytes.
pub const MAX_EXPR_LEN: usize = 4096;
/// Deepest bracket nesting accepted in a condition's text.
pub const MAX_BRACKETS: usize = 24;
/// Deepest expression tree accepted (its evaluation recurses this deep).
pub const MAX_DEPTH: usize = 64;

/// The names a condition may read besides the fixed request fields.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Schema {
    /// Feature names (`features.NAME`), in the order of the feature vectors.
    pub features: Vec<String>,
    /// Detector names (`score.NAME`), in the order of the member scores.
    pub detectors: Vec<String>,
}

/// A request field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum ReqField {
    Method,
    Host,
    Path,
    Query,
    Endpoint,
    Status,
    Client,
    ClientKind,
    Ip,
    UserAgent,
    Headers,
    Asn,
    Country,
    Ja4,
}

/// The request fields by name.
pub(crate) const REQUEST_FIELDS: [(&str, ReqField); 14] = [
    ("method", ReqField::Method),
    ("host", ReqField::Host),
    ("path", ReqField::Path),
    ("query", ReqField::Query),
    ("endpoint", ReqField::Endpoint),
    ("status", ReqField::Status),
    ("client", ReqField::Client),
    ("client_kind", ReqField::ClientKind),
    ("ip", ReqField::Ip),
    ("user_agent", ReqField::UserAgent),
    ("headers", ReqField::Headers),
    ("asn", ReqField::Asn),
    ("country", ReqField::Country),
    ("ja4", ReqField::Ja4),
];

impl ReqField {
    pub(crate) fn name(self) -> &'static str {
        REQUEST_FIELDS
            .iter()
            .find(|(_, f)| *f == self)
            .map(|(n, _)| *n)
            .unwrap_or("?")
    }

    pub(crate) fn by_name(name: &str) -> Option<Self> {
        REQUEST_FIELDS
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, f)| *f)
    }
}

/// A score field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum ScoreField {
    /// `score.overall`: the model's score.
    Overall,
    /// `score.surprisal`.
    Surprisal,
    /// `score.flagged`.
    Flagged,
    /// `score.endpoint_auth`: the endpoint monitor's authentication-failure alert score of
    /// the request's endpoint now.
    EndpointAuth,
    /// `score.NAME`: detector `i`'s score.
    Member(usize),
}

/// A field a condition reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Field {
    Request(ReqField),
    Feature(usize),
    Score(ScoreField),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Lt,
    Le,
    Gt,
    Ge,
    Eq,
    Ne,
}

impl Op {
    fn from_name(n: &str) -> Option<Self> {
        Some(match n {
            "_<_" => Self::Lt,
            "_<=_" => Self::Le,
            "_>_" => Self::Gt,
            "_>=_" => Self::Ge,
            "_==_" => Self::Eq,
            "_!=_" => Self::Ne,
            _ => return None,
        })
    }

    /// The same test with its operands swapped (`1 < x` is `x > 1`).
    fn flip(self) -> Self {
        match self {
            Self::Lt => Self::Gt,
            Self::Le => Self::Ge,
            Self::Gt => Self::Lt,
            Self::Ge => Self::Le,
            o => o,
        }
    }

    fn num(self, a: f64, b: f64) -> bool {
        match self {
            Self::Lt => a < b,
            Self::Le => a <= b,
            Self::Gt => a > b,
            Self::Ge => a >= b,
            Self::Eq => a == b,
            Self::Ne => a != b,
        }
    }
}

/// A conjunct evaluated without the interpreter.
#[derive(Debug, Clone)]
enum Test {
    /// A numeric field against a number (a comparison with a value that is not finite is
    /// false, except `!=`).
    Num { field: Field, op: Op, value: f64 },
    /// `score.flagged` or `!score.flagged`.
    Flagged(bool),
    /// A text field equal (or not) to a literal.
    Text {
        field: ReqField,
        equal: bool,
        value: String,
    },
    /// `field.startsWith('x')`, `endsWith`, `contains` with a literal.
    Affix {
        field: ReqField,
        kind: Affix,
        value: String,
    },
    /// `field.matches('pattern')` with a literal pattern, compiled once (by the regex
    /// engine the interpreter uses).
    Matches { field: ReqField, re: regex::Regex },
    /// A text field in a list of text literals.
    TextIn {
        field: ReqField,
        values: Vec<String>,
    },
    /// A numeric field in a list of number literals.
    NumIn { field: Field, values: Vec<f64> },
    /// Any of several native tests (`a || b`).
    Any(Vec<Test>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Affix {
    Starts,
    Ends,
    Contains,
}

fn text_literal(e: &IdedExpr) -> Option<String> {
    match &e.expr {
        Expr::Literal(LiteralValue::String(s)) => Some(s.inner().to_string()),
        _ => None,
    }
}

fn number_literal(e: &IdedExpr) -> Option<f64> {
    match &e.expr {
        Expr::Literal(LiteralValue::Int(i)) => Some(*i.inner() as f64),
        Expr::Literal(LiteralValue::UInt(u)) => Some(*u.inner() as f64),
        Expr::Literal(LiteralValue::Double(d)) => Some(*d.inner()),
        _ => None,
    }
}

/// One top-level conjunct of a condition.
#[derive(Debug, Clone)]
enum Conjunct {
    Native(Test),
    Cel(IdedExpr),
}

/// A compiled condition.
#[derive(Debug)]
pub(crate) struct Condition {
    conjuncts: Vec<Conjunct>,
    /// Fields the interpreted conjuncts read.
    pub(crate) cel_fields: Vec<Field>,
}

/// Why a condition was refused: where in its text, and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExprError {
    /// Line in the expression (1-based).
    pub line: usize,
    /// Column in that line (1-based, in characters).
    pub column: usize,
    /// What was wrong.
    pub reason: String,
}

impl ExprError {
    fn at(source: &str, offset: usize, reason: impl Into<String>) -> Self {
        let mut end = offset.min(source.len());
        while !source.is_char_boundary(end) {
            end -= 1;
        }
        let before = &source[..end];
        let line = before.matches('\n').count() + 1;
        let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        Self {
            line,
            column,
            reason: reason.into(),
        }
    }
}

impl std::fmt::Display for ExprError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}: {}", self.line, self.column, self.reason)
    }
}

/// Identifiers a condition may use besides its variables: CEL's type names.
const TYPE_NAMES: [&str; 10] = [
    "int",
    "uint",
    "double",
    "string",
    "bool",
    "bytes",
    "list",
    "map",
    "null_type",
    "type",
];

/// Parses `source` on a thread with a large stack: the parser recurses on nesting, and a
/// condition is parsed once, at load.
fn parse(source: &str) -> Result<Program, ExprError> {
    let text = source.to_string();
    let parsed = std::thread::Builder::new()
        .name("gatewatch-rules-parse".into())
        .stack_size(256 << 20)
        .spawn(move || {
            Program::compile(&text).map_err(|e| {
                let first = e.errors.first();
                let (line, col) = first.map_or((1, 0), |x| (x.pos.0.max(1), x.pos.1.max(0)));
                let msg = first.map_or_else(|| e.to_string(), |x| x.msg.clone());
                ExprError {
                    line: line as usize,
                    column: col as usize + 1,
                    reason: msg,
                }
            })
        })
        .map_err(|e| ExprError::at(source, 0, format!("cannot start the parser: {e}")))?;
    parsed
        .join()
        .map_err(|_| ExprError::at(source, 0, "the parser failed on this expression"))?
}

struct Checker<'a> {
    source: &'a str,
    program: &'a Program,
    schema: &'a Schema,
    fields: Vec<Field>,
}

impl Checker<'_> {
    fn err(&self, id: u64, reason: impl Into<String>) -> ExprError {
        let offset = self
            .program
            .source_info()
            .offset_for(id)
            .map_or(0, |(a, _)| a as usize);
        // The offset counts characters.
        let bytes = self
            .source
            .char_indices()
            .nth(offset)
            .map_or(self.source.len(), |(b, _)| b);
        ExprError::at(self.source, bytes, reason)
    }

    /// The field `root.name`, or why it is not one.
    fn field(&self, id: u64, root: &str, name: &str) -> Result<Field, ExprError> {
        match root {
            "request" => ReqField::by_name(name).map(Field::Request).ok_or_else(|| {
                let known: Vec<&str> = REQUEST_FIELDS.iter().map(|(n, _)| *n).collect();
                self.err(
                    id,
                    format!(
                        "unknown request field {name:?} (known: {})",
                        known.join(", ")
                    ),
                )
            }),
            "features" => self
                .schema
                .features
                .iter()
                .position(|f| f == name)
                .map(Field::Feature)
                .ok_or_else(|| self.err(id, format!("unknown feature {name:?}"))),
            "score" => match name {
                "overall" => Ok(Field::Score(ScoreField::Overall)),
                "surprisal" => Ok(Field::Score(ScoreField::Surprisal)),
                "flagged" => Ok(Field::Score(ScoreField::Flagged)),
                "endpoint_auth" => Ok(Field::Score(ScoreField::EndpointAuth)),
                _ => self
                    .schema
                    .detectors
                    .iter()
                    .position(|d| d == name)
                    .map(|i| Field::Score(ScoreField::Member(i)))
                    .ok_or_else(|| {
                        self.err(
                            id,
                            format!(
                                "unknown score field {name:?} (known: overall, surprisal, \
                                 flagged, endpoint_auth, {})",
                                self.schema.detectors.join(", ")
                            ),
                        )
                    }),
            },
            _ => Err(self.err(id, format!("unknown variable {root:?}"))),
        }
    }

    fn walk(
        &mut self,
        e: &IdedExpr,
        bound: &mut Vec<String>,
        depth: usize,
    ) -> Result<(), ExprError> {
        if depth > MAX_DEPTH {
            return Err(self.err(
                e.id,
                format!("the expression is nested deeper than {MAX_DEPTH} levels"),
            ));
        }
        match &e.expr {
            Expr::Ident(name) => {
                if bound.iter().any(|b| b == name) || TYPE_NAMES.contains(&name.as_str()) {
                    Ok(())
                } else if matches!(name.as_str(), "request" | "features" | "score") {
                    Err(self.err(
                        e.id,
                        format!("use {name}.FIELD: {name} is not a value by itself"),
                    ))
                } else {
                    Err(self.err(
                        e.id,
                        format!(
                            "unknown variable {name:?} (a condition reads request.*, \
                             features.* and score.*)"
                        ),
                    ))
                }
            }
            Expr::Select(s) => {
                if let Expr::Ident(root) = &s.operand.expr
                    && !bound.iter().any(|b| b == root)
                    && !TYPE_NAMES.contains(&root.as_str())
                {
                    let f = self.field(s.operand.id, root, &s.field)?;
                    if !self.fields.contains(&f) {
                        self.fields.push(f);
                    }
                    return Ok(());
                }
                self.walk(&s.operand, bound, depth + 1)
            }
            Expr::Call(c) => {
                if let Some(t) = &c.target {
                    self.walk(t, bound, depth + 1)?;
                }
                for a in &c.args {
                    self.walk(a, bound, depth + 1)?;
                }
                Ok(())
            }
            Expr::Comprehension(c) => {
                self.walk(&c.iter_range, bound, depth + 1)?;
                self.walk(&c.accu_init, bound, depth + 1)?;
                let n = bound.len();
                bound.push(c.iter_var.clone());
                if let Some(v) = &c.iter_var2 {
                    bound.push(v.clone());
                }
                bound.push(c.accu_var.clone());
                let r = self
                    .walk(&c.loop_cond, bound, depth + 1)
                    .and_then(|()| self.walk(&c.loop_step, bound, depth + 1))
                    .and_then(|()| self.walk(&c.result, bound, depth + 1));
                bound.truncate(n);
                r
            }
            Expr::List(l) => {
                for x in &l.elements {
                    self.walk(x, bound, depth + 1)?;
                }
                Ok(())
            }
            Expr::Map(m) => {
                for x in &m.entries {
                    if let cel::common::ast::EntryExpr::MapEntry(me) = &x.expr {
                        self.walk(&me.key, bound, depth + 1)?;
                        self.walk(&me.value, bound, depth + 1)?;
                    }
                }
                Ok(())
            }
            Expr::Struct(_) => Err(self.err(e.id, "message literals are not supported")),
            Expr::Literal(_) | Expr::Unspecified => Ok(()),
        }
    }
}

/// The field of `root.name` when `e` is exactly that.
fn as_field(e: &IdedExpr, schema: &Schema) -> Option<Field> {
    let Expr::Select(s) = &e.expr else {
        return None;
    };
    if s.test {
        return None;
    }
    let Expr::Ident(root) = &s.operand.expr else {
        return None;
    };
    match root.as_str() {
        "request" => ReqField::by_name(&s.field).map(Field::Request),
        "features" => schema
            .features
            .iter()
            .position(|f| *f == s.field)
            .map(Field::Feature),
        "score" => match s.field.as_str() {
            "overall" => Some(Field::Score(ScoreField::Overall)),
            "surprisal" => Some(Field::Score(ScoreField::Surprisal)),
            "flagged" => Some(Field::Score(ScoreField::Flagged)),
            "endpoint_auth" => Some(Field::Score(ScoreField::EndpointAuth)),
            n => schema
                .detectors
                .iter()
                .position(|d| d == n)
                .map(|i| Field::Score(ScoreField::Member(i))),
        },
        _ => None,
    }
}

fn is_numeric(f: Field) -> bool {
    match f {
        Field::Feature(_) => true,
        Field::Score(s) => s != ScoreField::Flagged,
        Field::Request(r) => r == ReqField::Status,
    }
}

fn is_text(f: Field) -> Option<ReqField> {
    match f {
        Field::Request(r) if !matches!(r, ReqField::Status | ReqField::Headers) => Some(r),
        _ => None,
    }
}

/// The disjuncts of `e` (`a || b || c` → `[a, b, c]`).
fn disjuncts<'e>(e: &'e IdedExpr, out: &mut Vec<&'e IdedExpr>) {
    if let Expr::Call(c) = &e.expr
        && c.func_name == "_||_"
        && c.target.is_none()
        && c.args.len() == 2
    {
        disjuncts(&c.args[0], out);
        disjuncts(&c.args[1], out);
    } else {
        out.push(e);
    }
}

/// The conjunct `e` as a native test, when it is a simple one or a disjunction of simple
/// ones.
fn native(e: &IdedExpr, schema: &Schema) -> Option<Test> {
    let mut parts = Vec::new();
    disjuncts(e, &mut parts);
    if parts.len() > 1 {
        return parts
            .into_iter()
            .map(|p| simple(p, schema))
            .collect::<Option<Vec<_>>>()
            .map(Test::Any);
    }
    simple(e, schema)
}

/// `e` as a native test, when it is a simple one.
fn simple(e: &IdedExpr, schema: &Schema) -> Option<Test> {
    if let Some(Field::Score(ScoreField::Flagged)) = as_field(e, schema) {
        return Some(Test::Flagged(true));
    }
    let Expr::Call(c) = &e.expr else {
        return None;
    };
    if let Some(t) = &c.target
        && c.func_name == "matches"
    {
        let field = is_text(as_field(t, schema)?)?;
        let [arg] = c.args.as_slice() else {
            return None;
        };
        // A pattern that does not compile is left to the interpreter, whose error refuses
        // the rule at load.
        let re = regex::Regex::new(&text_literal(arg)?).ok()?;
        return Some(Test::Matches { field, re });
    }
    if let Some(t) = &c.target {
        let kind = match c.func_name.as_str() {
            "startsWith" => Affix::Starts,
            "endsWith" => Affix::Ends,
            "contains" => Affix::Contains,
            _ => return None,
        };
        let field = is_text(as_field(t, schema)?)?;
        let [arg] = c.args.as_slice() else {
            return None;
        };
        return Some(Test::Affix {
            field,
            kind,
            value: text_literal(arg)?,
        });
    }
    if c.func_name == "@in" && c.args.len() == 2 {
        let field = as_field(&c.args[0], schema)?;
        let Expr::List(l) = &c.args[1].expr else {
            return None;
        };
        if is_numeric(field) {
            let values = l
                .elements
                .iter()
                .map(number_literal)
                .collect::<Option<_>>()?;
            return Some(Test::NumIn { field, values });
        }
        let values = l.elements.iter().map(text_literal).collect::<Option<_>>()?;
        return Some(Test::TextIn {
            field: is_text(field)?,
            values,
        });
    }
    if c.func_name == "!_" && c.args.len() == 1 {
        return matches!(
            as_field(&c.args[0], schema),
            Some(Field::Score(ScoreField::Flagged))
        )
        .then_some(Test::Flagged(false));
    }
    let op = Op::from_name(&c.func_name)?;
    let [a, b] = c.args.as_slice() else {
        return None;
    };
    let (field, lit, op) = match (as_field(a, schema), as_field(b, schema)) {
        (Some(f), None) => (f, b, op),
        (None, Some(f)) => (f, a, op.flip()),
        _ => return None,
    };
    let Expr::Literal(lit) = &lit.expr else {
        return None;
    };
    if is_numeric(field) {
        let value = match lit {
            LiteralValue::Int(i) => *i.inner() as f64,
            LiteralValue::UInt(u) => *u.inner() as f64,
            LiteralValue::Double(d) => *d.inner(),
            _ => return None,
        };
        return Some(Test::Num { field, op, value });
    }
    if let (Some(rf), LiteralValue::String(s)) = (is_text(field), lit)
        && matches!(op, Op::Eq | Op::Ne)
    {
        return Some(Test::Text {
            field: rf,
            equal: op == Op::Eq,
            value: s.inner().to_string(),
        });
    }
    None
}

/// The top-level conjuncts of `e` (`a && b && c` → `[a, b, c]`).
fn conjuncts(e: &IdedExpr, out: &mut Vec<IdedExpr>) {
    if let Expr::Call(c) = &e.expr
        && c.func_name == "_&&_"
        && c.target.is_none()
        && c.args.len() == 2
    {
        conjuncts(&c.args[0], out);
        conjuncts(&c.args[1], out);
    } else {
        out.push(e.clone());
    }
}

fn max_brackets(s: &str) -> usize {
    let (mut depth, mut max) = (0usize, 0usize);
    for c in s.chars() {
        match c {
            '(' | '[' | '{' => {
                depth += 1;
                max = max.max(depth);
            }
            ')' | ']' | '}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    max
}

impl Condition {
    /// Compiles `source` against `schema`, checks every name it reads, and tries it once on
    /// a neutral request so that a condition that cannot give a bool is refused now.
    pub(crate) fn compile(
        source: &str,
        schema: &Schema,
        root: &Context<'static, 'static>,
    ) -> Result<Self, ExprError> {
        if source.trim().is_empty() {
            return Err(ExprError::at(source, 0, "the condition is empty"));
        }
        if source.len() > MAX_EXPR_LEN {
            return Err(ExprError::at(
                source,
                MAX_EXPR_LEN,
                format!(
                    "the condition is {} bytes long, more than {MAX_EXPR_LEN}",
                    source.len()
                ),
            ));
        }
        if max_brackets(source) > MAX_BRACKETS {
            return Err(ExprError::at(
                source,
                0,
                format!("brackets are nested deeper than {MAX_BRACKETS} levels"),
            ));
        }
        let program = parse(source)?;
        let mut checker = Checker {
            source,
            program: &program,
            schema,
            fields: Vec::new(),
        };
        checker.walk(program.expression(), &mut Vec::new(), 0)?;
        let mut parts = Vec::new();
        conjuncts(program.expression(), &mut parts);
        let mut natives = Vec::new();
        let mut cels = Vec::new();
        for p in parts {
            match native(&p, schema) {
                Some(t) => natives.push(Conjunct::Native(t)),
                None => cels.push(p),
            }
        }
        let mut cel_fields = Vec::new();
        for c in &cels {
            let mut ch = Checker {
                source,
                program: &program,
                schema,
                fields: Vec::new(),
            };
            ch.walk(c, &mut Vec::new(), 0)?;
            for f in ch.fields {
                if !cel_fields.contains(&f) {
                    cel_fields.push(f);
                }
            }
        }
        // A neutral request: the interpreted parts must give a bool (a missing map key is
        // the request's business, not the rule's).
        if !cels.is_empty() {
            let zeros = vec![0.0; schema.features.len().max(schema.detectors.len())];
            let probe = Input::probe(&zeros);
            let keys = field_keys(&cel_fields, schema);
            let scope = Bindings::build(&probe, &cel_fields, &keys, root);
            for c in &cels {
                match scope.ctx.resolve(c) {
                    Ok(Value::Bool(_)) => {}
                    Ok(v) => {
                        return Err(checker.err(
                            c.id,
                            format!("this part gives a {:?}, not a bool", v.type_of()),
                        ));
                    }
                    Err(cel::ExecutionError::NoSuchKey(_)) => {}
                    Err(e) => return Err(checker.err(c.id, e.to_string())),
                }
            }
        }
        let conjuncts = natives
            .into_iter()
            .chain(cels.into_iter().map(Conjunct::Cel))
            .collect();
        Ok(Self {
            conjuncts,
            cel_fields,
        })
    }

    /// Whether every conjunct is evaluated natively.
    #[cfg(test)]
    pub(crate) fn is_native(&self) -> bool {
        self.conjuncts
            .iter()
            .all(|c| matches!(c, Conjunct::Native(_)))
    }

    /// Whether the condition holds for `input`. `scope` is built on first need (the values
    /// of the fields any interpreted conjunct reads); an interpreted conjunct that fails
    /// counts in `errors` and does not hold.
    pub(crate) fn eval<'s>(
        &self,
        input: &Input<'_>,
        scope: &mut Option<Bindings<'s>>,
        build: &dyn Fn() -> Bindings<'s>,
        errors: &mut u64,
    ) -> bool {
        for c in &self.conjuncts {
            let ok = match c {
                Conjunct::Native(t) => t.eval(input),
                Conjunct::Cel(e) => {
                    let s = scope.get_or_insert_with(build);
                    match s.ctx.resolve(e) {
                        Ok(Value::Bool(b)) => b,
                        Ok(_) | Err(_) => {
                            *errors += 1;
                            false
                        }
                    }
                }
            };
            if !ok {
                return false;
            }
        }
        true
    }
}

impl Test {
    fn eval(&self, input: &Input<'_>) -> bool {
        match self {
            Self::Num { field, op, value } => op.num(input.number(*field), *value),
            Self::Flagged(want) => input.flagged() == *want,
            Self::Text {
                field,
                equal,
                value,
            } => (input.text(*field) == value.as_str()) == *equal,
            Self::Affix { field, kind, value } => {
                let t = input.text(*field);
                match kind {
                    Affix::Starts => t.starts_with(value.as_str()),
                    Affix::Ends => t.ends_with(value.as_str()),
                    Affix::Contains => t.contains(value.as_str()),
                }
            }
            Self::Matches { field, re } => re.is_match(&input.text(*field)),
            Self::TextIn { field, values } => {
                let t = input.text(*field);
                values.iter().any(|v| *v == t)
            }
            Self::NumIn { field, values } => {
                let x = input.number(*field);
                values.contains(&x)
            }
            Self::Any(tests) => tests.iter().any(|t| t.eval(input)),
        }
    }
}

/// The interpreter's scope for one event: `request`, `features` and `score` as maps of the
/// fields the interpreted conjuncts read.
pub(crate) struct Bindings<'r> {
    pub(crate) ctx: Context<'r, 'static>,
}

fn key(name: &str) -> Key {
    Key::String(Arc::new(name.to_string()))
}

/// The names of the fields the interpreted conjuncts read, as map keys made once.
pub(crate) fn field_keys(fields: &[Field], schema: &Schema) -> Vec<Key> {
    fields
        .iter()
        .map(|f| match *f {
            Field::Request(r) => key(r.name()),
            Field::Feature(i) => key(schema.features.get(i).map_or("", String::as_str)),
            Field::Score(s) => key(match s {
                ScoreField::Flagged => "flagged",
                ScoreField::Overall => "overall",
                ScoreField::Surprisal => "surprisal",
                ScoreField::EndpointAuth => "endpoint_auth",
                ScoreField::Member(i) => schema.detectors.get(i).map_or("", String::as_str),
            }),
        })
        .collect()
}

impl<'r> Bindings<'r> {
    /// The scope of `input`: `fields`, named by `keys` (from [`field_keys`]).
    pub(crate) fn build(
        input: &Input<'_>,
        fields: &[Field],
        keys: &[Key],
        root: &'r Context<'static, 'static>,
    ) -> Self {
        let mut request = HashMap::new();
        let mut features = HashMap::new();
        let mut score = HashMap::new();
        for (f, k) in fields.iter().zip(keys) {
            let k = k.clone();
            match *f {
                Field::Request(r) => {
                    let v = match r {
                        ReqField::Status => Value::Int(i64::from(input.request.status)),
                        ReqField::Headers => {
                            let m: HashMap<Key, Value> = input
                                .request
                                .headers
                                .iter()
                                .map(|(k, v)| (key(k), Value::String(Arc::new(v.to_string()))))
                                .collect();
                            Value::Map(Map { map: Arc::new(m) })
                        }
                        t => Value::String(Arc::new(input.text(t).into_owned())),
                    };
                    request.insert(k, v);
                }
                Field::Feature(_) => {
                    features.insert(k, Value::Float(input.number(*f)));
                }
                Field::Score(ScoreField::Flagged) => {
                    score.insert(k, Value::Bool(input.flagged()));
                }
                Field::Score(_) => {
                    score.insert(k, Value::Float(input.number(*f)));
                }
            }
        }
        let mut ctx = root.new_inner_scope();
        let map = |m: HashMap<Key, Value>| Value::Map(Map { map: Arc::new(m) });
        ctx.add_variable_from_value("request", map(request));
        ctx.add_variable_from_value("features", map(features));
        ctx.add_variable_from_value("score", map(score));
        Self { ctx }
    }
}
