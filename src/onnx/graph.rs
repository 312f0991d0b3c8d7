//! A small, typed builder of ONNX graphs: named f32 inputs and outputs with fixed or symbolic
//! dimensions, initializers stored as raw little-endian data, nodes of the default domain at
//! opset [`OPSET`] and of `com.microsoft` (imported only when used). It knows nothing of
//! models; `export` writes EmotionCLIP with it.

use prost::Message;

use super::proto::{
    AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, TensorProto,
    TensorShapeProto, TypeProto, ValueInfoProto, attribute_proto::AttributeType,
    tensor_proto::DataType, tensor_shape_proto, type_proto,
};

/// The default-domain opset of every graph (LayerNormalization is native from 17).
pub const OPSET: i64 = 17;
/// IR version 8 (July 2021), the one that goes with opset 17.
pub const IR_VERSION: i64 = 8;
/// ONNX Runtime's contrib-operator domain (`Attention`, `Gelu`, ...).
pub const MS_DOMAIN: &str = "com.microsoft";

/// A tensor of the graph (input, initializer or node output), by name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Value(String);

impl Value {
    pub fn name(&self) -> &str {
        &self.0
    }

    /// An optional node input left out (the empty name).
    pub fn absent() -> Self {
        Value(String::new())
    }
}

/// One dimension of a graph input or output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dim {
    Fixed(usize),
    /// A dimension chosen at run time, e.g. the batch.
    Symbolic(String),
}

impl Dim {
    pub fn symbolic(name: &str) -> Self {
        Dim::Symbolic(name.to_owned())
    }
}

impl From<usize> for Dim {
    fn from(n: usize) -> Self {
        Dim::Fixed(n)
    }
}

impl std::fmt::Display for Dim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Dim::Fixed(n) => write!(f, "{n}"),
            Dim::Symbolic(s) => f.write_str(s),
        }
    }
}

/// A node attribute value.
#[derive(Debug, Clone, PartialEq)]
pub enum Attr {
    Int(i64),
    Ints(Vec<i64>),
    Float(f32),
    String(String),
}

/// Element types of initializers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Elem {
    F32,
    F16,
    I64,
    I8,
    U8,
}

impl Elem {
    fn data_type(self) -> DataType {
        match self {
            Elem::F32 => DataType::Float,
            Elem::F16 => DataType::Float16,
            Elem::I64 => DataType::Int64,
            Elem::I8 => DataType::Int8,
            Elem::U8 => DataType::Uint8,
        }
    }

    fn size(self) -> usize {
        match self {
            Elem::F32 => 4,
            Elem::F16 => 2,
            Elem::I64 => 8,
            Elem::I8 | Elem::U8 => 1,
        }
    }
}

/// A graph under construction. Names of node outputs and initializers are made unique by a
/// counter; graph inputs and outputs keep the names they are given.
#[derive(Debug, Default)]
pub struct Graph {
    name: String,
    nodes: Vec<NodeProto>,
    initializers: Vec<TensorProto>,
    inputs: Vec<ValueInfoProto>,
    outputs: Vec<ValueInfoProto>,
    next: usize,
    uses_ms_domain: bool,
    /// The element type of [`Graph::float_tensor`] / [`Graph::float_scalar`]: f32, or f16
    /// for a half-precision graph.
    float: Option<Elem>,
}

impl Graph {
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            ..Self::default()
        }
    }

    /// Makes [`Graph::float_tensor`] and [`Graph::float_scalar`] write `elem` (F32 or F16).
    pub fn set_float(&mut self, elem: Elem) {
        assert!(
            matches!(elem, Elem::F32 | Elem::F16),
            "{elem:?} is not a float type"
        );
        self.float = Some(elem);
    }

    /// The element type of the graph's float tensors (F32 unless set).
    pub fn float(&self) -> Elem {
        self.float.unwrap_or(Elem::F32)
    }

    fn fresh(&mut self, hint: &str) -> String {
        self.next += 1;
        format!("{hint}_{}", self.next)
    }

    /// A float32 graph input.
    pub fn input(&mut self, name: &str, dims: &[Dim]) -> Value {
        self.inputs.push(value_info(name, dims));
        Value(name.to_owned())
    }

    /// Makes `value` (a node output) a float32 graph output called `name`.
    ///
    /// # Panics
    /// When `value` is not the output of a node of this graph (a programming error).
    pub fn output(&mut self, value: &Value, name: &str, dims: &[Dim]) {
        let node = self
            .nodes
            .iter_mut()
            .find(|n| n.output.contains(&value.0))
            .expect("a graph output must be a node output");
        for o in node.output.iter_mut().filter(|o| **o == value.0) {
            name.clone_into(o);
        }
        for n in &mut self.nodes {
            for i in n.input.iter_mut().filter(|i| **i == value.0) {
                name.clone_into(i);
            }
        }
        self.outputs.push(value_info(name, dims));
    }

    /// An initializer from raw little-endian bytes.
    ///
    /// # Panics
    /// When `raw` does not hold exactly the elements of `dims`.
    pub fn raw_initializer(
        &mut self,
        hint: &str,
        elem: Elem,
        dims: &[usize],
        raw: Vec<u8>,
    ) -> Value {
        let count: usize = dims.iter().product();
        assert_eq!(
            raw.len(),
            count * elem.size(),
            "{hint}: {} bytes for dims {dims:?}",
            raw.len()
        );
        let name = self.fresh(hint);
        self.initializers.push(TensorProto {
            name: Some(name.clone()),
            dims: dims.iter().map(|&d| d as i64).collect(),
            data_type: Some(elem.data_type() as i32),
            raw_data: Some(raw),
            ..TensorProto::default()
        });
        Value(name)
    }

    /// A float32 initializer of shape `dims` (row-major `data`).
    pub fn f32_tensor(&mut self, hint: &str, dims: &[usize], data: &[f32]) -> Value {
        let raw = data.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.raw_initializer(hint, Elem::F32, dims, raw)
    }

    /// A float32 scalar (rank 0) initializer.
    pub fn f32_scalar(&mut self, hint: &str, v: f32) -> Value {
        self.f32_tensor(hint, &[], &[v])
    }

    /// A float16 initializer from f32 values (rounded to nearest, ties to even).
    pub fn f16_tensor(&mut self, hint: &str, dims: &[usize], data: &[f32]) -> Value {
        let raw = data
            .iter()
            .flat_map(|v| f32_to_f16_bits(*v).to_le_bytes())
            .collect();
        self.raw_initializer(hint, Elem::F16, dims, raw)
    }

    /// An initializer of the graph's float type ([`Graph::set_float`]).
    pub fn float_tensor(&mut self, hint: &str, dims: &[usize], data: &[f32]) -> Value {
        match self.float() {
            Elem::F16 => self.f16_tensor(hint, dims, data),
            _ => self.f32_tensor(hint, dims, data),
        }
    }

    /// A rank-0 initializer of the graph's float type.
    pub fn float_scalar(&mut self, hint: &str, v: f32) -> Value {
        self.float_tensor(hint, &[], &[v])
    }

    /// An int8 initializer.
    pub fn i8_tensor(&mut self, hint: &str, dims: &[usize], data: &[i8]) -> Value {
        let raw = data.iter().map(|v| v.to_le_bytes()[0]).collect();
        self.raw_initializer(hint, Elem::I8, dims, raw)
    }

    /// A 1-D int64 initializer (shapes, axes, indices).
    pub fn i64_vector(&mut self, hint: &str, data: &[i64]) -> Value {
        let raw = data.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.raw_initializer(hint, Elem::I64, &[data.len()], raw)
    }

    /// A rank-0 int64 initializer.
    pub fn i64_scalar(&mut self, hint: &str, v: i64) -> Value {
        self.raw_initializer(hint, Elem::I64, &[], v.to_le_bytes().to_vec())
    }

    /// A default-domain node with one output.
    pub fn node(&mut self, op: &str, inputs: &[&Value], attrs: &[(&str, Attr)]) -> Value {
        self.push(op, "", inputs, attrs)
    }

    /// A `com.microsoft` node with one output.
    pub fn ms_node(&mut self, op: &str, inputs: &[&Value], attrs: &[(&str, Attr)]) -> Value {
        self.uses_ms_domain = true;
        self.push(op, MS_DOMAIN, inputs, attrs)
    }

    /// A node with `outputs` outputs, of the default domain (`""`) or `com.microsoft`.
    pub fn node_n(
        &mut self,
        op: &str,
        domain: &str,
        inputs: &[&Value],
        attrs: &[(&str, Attr)],
        outputs: usize,
    ) -> Vec<Value> {
        if domain == MS_DOMAIN {
            self.uses_ms_domain = true;
        }
        let outs: Vec<String> = (0..outputs).map(|_| self.fresh(op)).collect();
        self.nodes.push(NodeProto {
            input: inputs.iter().map(|v| v.0.clone()).collect(),
            output: outs.clone(),
            name: Some(format!("{}_node", outs[0])),
            op_type: Some(op.to_owned()),
            domain: (!domain.is_empty()).then(|| domain.to_owned()),
            attribute: attrs.iter().map(|(n, a)| attribute(n, a)).collect(),
            ..NodeProto::default()
        });
        outs.into_iter().map(Value).collect()
    }

    fn push(&mut self, op: &str, domain: &str, inputs: &[&Value], attrs: &[(&str, Attr)]) -> Value {
        self.node_n(op, domain, inputs, attrs, 1).remove(0)
    }

    /// `Cast` to `to`.
    pub fn cast(&mut self, x: &Value, to: Elem) -> Value {
        self.node("Cast", &[x], &[("to", Attr::Int(to.data_type() as i64))])
    }

    pub fn add(&mut self, a: &Value, b: &Value) -> Value {
        self.node("Add", &[a, b], &[])
    }
    pub fn mul(&mut self, a: &Value, b: &Value) -> Value {
        self.node("Mul", &[a, b], &[])
    }
    pub fn div(&mut self, a: &Value, b: &Value) -> Value {
        self.node("Div", &[a, b], &[])
    }
    pub fn matmul(&mut self, a: &Value, b: &Value) -> Value {
        self.node("MatMul", &[a, b], &[])
    }
    pub fn transpose(&mut self, x: &Value, perm: &[i64]) -> Value {
        self.node("Transpose", &[x], &[("perm", Attr::Ints(perm.to_vec()))])
    }
    /// `Reshape` to a constant shape (0 keeps a dimension, -1 infers one).
    pub fn reshape(&mut self, x: &Value, shape: &[i64]) -> Value {
        let s = self.i64_vector("shape", shape);
        self.node("Reshape", &[x, &s], &[])
    }
    /// `x[.., start..end, ..]` along `axis`.
    pub fn slice(&mut self, x: &Value, axis: i64, start: i64, end: i64) -> Value {
        let starts = self.i64_vector("starts", &[start]);
        let ends = self.i64_vector("ends", &[end]);
        let axes = self.i64_vector("axes", &[axis]);
        self.node("Slice", &[x, &starts, &ends, &axes], &[])
    }
    pub fn concat(&mut self, xs: &[&Value], axis: i64) -> Value {
        self.node("Concat", xs, &[("axis", Attr::Int(axis))])
    }
    pub fn unsqueeze(&mut self, x: &Value, axes: &[i64]) -> Value {
        let a = self.i64_vector("axes", axes);
        self.node("Unsqueeze", &[x, &a], &[])
    }
    pub fn softmax(&mut self, x: &Value, axis: i64) -> Value {
        self.node("Softmax", &[x], &[("axis", Attr::Int(axis))])
    }
    /// Mean over `axes` (opset 17: an attribute).
    pub fn reduce_mean(&mut self, x: &Value, axes: &[i64], keepdims: bool) -> Value {
        self.node(
            "ReduceMean",
            &[x],
            &[
                ("axes", Attr::Ints(axes.to_vec())),
                ("keepdims", Attr::Int(keepdims.into())),
            ],
        )
    }
    /// `LayerNormalization` over the last axis.
    pub fn layer_norm(&mut self, x: &Value, gamma: &Value, beta: &Value, eps: f32) -> Value {
        self.node(
            "LayerNormalization",
            &[x, gamma, beta],
            &[("axis", Attr::Int(-1)), ("epsilon", Attr::Float(eps))],
        )
    }
    /// Exact (erf) GELU in the one form ONNX Runtime fuses into `Gelu`:
    /// `Div(x, sqrt 2) -> Erf -> Add 1 -> Mul x -> Mul 0.5`.
    pub fn gelu_erf(&mut self, x: &Value) -> Value {
        let sqrt2 = self.float_scalar("sqrt2", std::f32::consts::SQRT_2);
        let one = self.float_scalar("one", 1.0);
        let half = self.float_scalar("half", 0.5);
        let d = self.div(x, &sqrt2);
        let e = self.node("Erf", &[&d], &[]);
        let e = self.add(&e, &one);
        let m = self.mul(x, &e);
        self.mul(&m, &half)
    }

    /// Nodes so far, by op type (for tests and reports).
    pub fn op_counts(&self) -> std::collections::BTreeMap<String, usize> {
        op_counts(&self.nodes)
    }

    /// The finished model: opset [`OPSET`], plus `com.microsoft` 1 when a node uses it.
    pub fn into_model(self, producer_version: &str, doc: &str) -> ModelProto {
        let mut opset_import = vec![OperatorSetIdProto {
            domain: Some(String::new()),
            version: Some(OPSET),
        }];
        if self.uses_ms_domain {
            opset_import.push(OperatorSetIdProto {
                domain: Some(MS_DOMAIN.to_owned()),
                version: Some(1),
            });
        }
        ModelProto {
            ir_version: Some(IR_VERSION),
            opset_import,
            producer_name: Some("affectd".to_owned()),
            producer_version: Some(producer_version.to_owned()),
            doc_string: (!doc.is_empty()).then(|| doc.to_owned()),
            graph: Some(GraphProto {
                node: self.nodes,
                name: Some(self.name),
                initializer: self.initializers,
                input: self.inputs,
                output: self.outputs,
                ..GraphProto::default()
            }),
            ..ModelProto::default()
        }
    }
}

/// The IEEE half-precision bits nearest to `v` (ties to even; overflow to infinity, NaN
/// kept NaN).
pub fn f32_to_f16_bits(v: f32) -> u16 {
    let bits = v.to_bits();
    let sign = ((bits >> 16) & 0x8000) as u16;
    let exp = ((bits >> 23) & 0xff) as i32;
    let man = bits & 0x7f_ffff;
    if exp == 0xff {
        return sign | 0x7c00 | if man != 0 { 0x200 } else { 0 };
    }
    // Unbiased exponent, re-biased for f16 (15).
    let e = exp - 127 + 15;
    if e >= 0x1f {
        return sign | 0x7c00;
    }
    // The 24-bit significand with its implicit bit (0 for f32 subnormals, which are far
    // below f16's range anyway).
    let full = if exp == 0 { man } else { man | 0x80_0000 };
    // Right shift that leaves 11 significant bits (normal) or fewer (subnormal f16).
    let shift = if e <= 0 { 14 - e } else { 13 };
    if shift > 24 {
        return sign;
    }
    let kept = full >> shift;
    let rest = full & ((1u32 << shift) - 1);
    let half = 1u32 << (shift - 1);
    let rounded = kept + u32::from(rest > half || (rest == half && kept & 1 == 1));
    if e <= 0 {
        // Subnormal: the value is rounded * 2^-24; a carry into 0x400 is the smallest normal.
        sign | rounded as u16
    } else {
        // Normal: adding the mantissa (with its implicit bit) to the exponent field carries
        // into the exponent on rounding up, as it should.
        sign | ((((e as u32) << 10) + (rounded - 0x400)) as u16)
    }
}

/// The serialised model.
pub fn to_bytes(model: &ModelProto) -> Vec<u8> {
    model.encode_to_vec()
}

/// Parses a serialised model (to count the ops of an optimised graph, say).
pub fn from_bytes(bytes: &[u8]) -> Result<ModelProto, prost::DecodeError> {
    ModelProto::decode(bytes)
}

/// Nodes by op type (domain-qualified for non-default domains: `com.microsoft.Attention`).
pub fn op_counts(nodes: &[NodeProto]) -> std::collections::BTreeMap<String, usize> {
    let mut counts = std::collections::BTreeMap::new();
    for n in nodes {
        let op = n.op_type.clone().unwrap_or_default();
        let key = match n.domain.as_deref() {
            None | Some("") | Some("ai.onnx") => op,
            Some(d) => format!("{d}.{op}"),
        };
        *counts.entry(key).or_insert(0) += 1;
    }
    counts
}

fn value_info(name: &str, dims: &[Dim]) -> ValueInfoProto {
    let dim = dims
        .iter()
        .map(|d| tensor_shape_proto::Dimension {
            value: Some(match d {
                Dim::Fixed(n) => tensor_shape_proto::dimension::Value::DimValue(*n as i64),
                Dim::Symbolic(s) => tensor_shape_proto::dimension::Value::DimParam(s.clone()),
            }),
            ..Default::default()
        })
        .collect();
    ValueInfoProto {
        name: Some(name.to_owned()),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: Some(DataType::Float as i32),
                shape: Some(TensorShapeProto { dim }),
            })),
            ..TypeProto::default()
        }),
        ..ValueInfoProto::default()
    }
}

fn attribute(name: &str, a: &Attr) -> AttributeProto {
    let mut p = AttributeProto {
        name: Some(name.to_owned()),
        ..AttributeProto::default()
    };
    match a {
        Attr::Int(i) => {
            p.r#type = Some(AttributeType::Int as i32);
            p.i = Some(*i);
        }
        Attr::Ints(v) => {
            p.r#type = Some(AttributeType::Ints as i32);
            p.ints = v.clone();
        }
        Attr::Float(f) => {
            p.r#type = Some(AttributeType::Float as i32);
            p.f = Some(*f);
        }
        Attr::String(s) => {
            p.r#type = Some(AttributeType::String as i32);
            p.s = Some(s.as_bytes().to_vec());
        }
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_graph_serialises_with_its_opsets_and_raw_initializers() {
        let mut g = Graph::new("t");
        let x = g.input("x", &[Dim::symbolic("batch"), 2.into()]);
        let w = g.f32_tensor("w", &[2, 2], &[1.0, 2.0, 3.0, 4.0]);
        let y = g.matmul(&x, &w);
        let y = g.ms_node("Gelu", &[&y], &[]);
        g.output(&y, "y", &[Dim::symbolic("batch"), 2.into()]);
        assert_eq!(g.op_counts()["com.microsoft.Gelu"], 1);
        let m = g.into_model("test", "");
        let back = from_bytes(&to_bytes(&m)).unwrap();
        assert_eq!(back, m);
        let graph = back.graph.unwrap();
        assert_eq!(graph.node[1].output, ["y"]);
        assert_eq!(graph.initializer[0].raw_data.as_ref().unwrap().len(), 16);
        let domains: Vec<_> = back
            .opset_import
            .iter()
            .map(|o| (o.domain.clone().unwrap(), o.version.unwrap()))
            .collect();
        assert_eq!(domains, [(String::new(), OPSET), (MS_DOMAIN.to_owned(), 1)]);
    }

    #[test]
    fn f16_bits_round_to_nearest_even_as_candle_does() {
        use candle_core::{DType, Device, Tensor};
        let mut values = vec![
            0.0f32,
            -0.0,
            1.0,
            -2.5,
            65504.0,
            65520.0,
            1e6,
            6.1e-5,
            5.96e-8,
            2.9e-8,
            1e-9,
            0.1,
            1.0 + 1.0 / 2048.0,
            1.0 + 3.0 / 2048.0,
            f32::INFINITY,
            f32::NEG_INFINITY,
        ];
        let mut x = 0x1234_5678u32;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            // Magnitudes from 2^-30 to 2^20, both signs.
            let e = (x % 50) as i32 - 30;
            values.push((x as f32 / u32::MAX as f32 - 0.5) * 2f32.powi(e));
        }
        // candle's own rounding (the `half` crate), read back as f32; and ours, through
        // candle's f16 -> f32.
        let dev = Device::Cpu;
        let want = Tensor::new(values.as_slice(), &dev)
            .and_then(|t| t.to_dtype(DType::F16))
            .and_then(|t| t.to_dtype(DType::F32))
            .and_then(|t| t.to_vec1::<f32>())
            .unwrap();
        let bytes: Vec<u8> = values
            .iter()
            .flat_map(|v| f32_to_f16_bits(*v).to_le_bytes())
            .collect();
        let got = Tensor::from_raw_buffer(&bytes, DType::F16, &[values.len()], &dev)
            .and_then(|t| t.to_dtype(DType::F32))
            .and_then(|t| t.to_vec1::<f32>())
            .unwrap();
        for ((v, g), w) in values.iter().zip(got).zip(want) {
            assert_eq!(g.to_bits(), w.to_bits(), "{v:e}: {g:e} vs {w:e}");
        }
        assert_eq!(f32_to_f16_bits(f32::NAN) & 0x7c00, 0x7c00);
        assert_ne!(f32_to_f16_bits(f32::NAN) & 0x3ff, 0);
    }
}
