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
    I64,
    I8,
    U8,
}

impl Elem {
    fn data_type(self) -> DataType {
        match self {
            Elem::F32 => DataType::Float,
            Elem::I64 => DataType::Int64,
            Elem::I8 => DataType::Int8,
            Elem::U8 => DataType::Uint8,
        }
    }

    fn size(self) -> usize {
        match self {
            Elem::F32 => 4,
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
}

impl Graph {
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            ..Self::default()
        }
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

    fn push(&mut self, op: &str, domain: &str, inputs: &[&Value], attrs: &[(&str, Attr)]) -> Value {
        let out = self.fresh(op);
        self.nodes.push(NodeProto {
            input: inputs.iter().map(|v| v.0.clone()).collect(),
            output: vec![out.clone()],
            name: Some(format!("{out}_node")),
            op_type: Some(op.to_owned()),
            domain: (!domain.is_empty()).then(|| domain.to_owned()),
            attribute: attrs.iter().map(|(n, a)| attribute(n, a)).collect(),
            ..NodeProto::default()
        });
        Value(out)
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
        let sqrt2 = self.f32_scalar("sqrt2", std::f32::consts::SQRT_2);
        let one = self.f32_scalar("one", 1.0);
        let half = self.f32_scalar("half", 0.5);
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
}
