// Fused CPU kernels for MCCL's edge scorer and for subgraph extraction's ratings scan
// (cmcrec.models.kernels builds this on first use).
//
// The scorer's hidden layer over M scorer rows (one per rating, or per directed edge):
//
//     pre_m = a[src_m] + b[dst_m]          (H,)   a = W_s h, b = W_d h, per node
//     out_m = v . relu(pre_m)
//
// The PyTorch path builds pre as an (M, H) tensor (an embedding-bag gather), keeps it for the
// backward and scatters (M, H) gradients with two CSR products. These kernels never build it:
// the forward is one pass over the rows, and the backward recomputes pre_m row by row while it
// sums, for every node, the gradients of the rows it is an endpoint of (a CSR pattern of the rows
// by node, as the PyTorch path's scatter uses).
//
// The scorer values (scorer_values_*) turn the rows' scores s into the next layer's operator values:
// per subgraph g, w_m = s_m * count_g / total_g (weights that average 1), then norm_k * w[to_key_k] in
// the operator's key order. One pass per subgraph for the sums, one over the operator's entries.
//
// paired_graph_build sorts a batch's edges into RelationalGraph's operators with one stable counting
// sort (the keys dst * R + type are dense), where the PyTorch path radix-sorts and then gathers each
// derived array in its own pass.
//
// Deterministic for any thread count: every output element is a sum in a fixed order (rows in
// CSR order; grad_v as per-block partial sums over fixed blocks of nodes, then blocks in order).

#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstring>
#include <utility>
#include <vector>

namespace {

constexpr int64_t kRowGrain = 4096;
constexpr int64_t kNodeBlock = 256;

template <typename scalar_t, typename index_t>
void edge_mlp_forward_impl(const scalar_t* __restrict__ a, const scalar_t* __restrict__ b,
                           const scalar_t* __restrict__ v, const index_t* __restrict__ pairs, int64_t num_nodes,
                           int64_t rows, int64_t hidden, scalar_t* __restrict__ out) {
  at::parallel_for(0, rows, kRowGrain, [&](int64_t begin, int64_t end) {
    for (int64_t m = begin; m < end; ++m) {
      const scalar_t* __restrict__ pa = a + static_cast<int64_t>(pairs[2 * m]) * hidden;
      const scalar_t* __restrict__ pb = b + (static_cast<int64_t>(pairs[2 * m + 1]) - num_nodes) * hidden;
      scalar_t acc = 0;
      for (int64_t h = 0; h < hidden; ++h) {
        acc += std::max(pa[h] + pb[h], scalar_t(0)) * v[h];
      }
      out[m] = acc;
    }
  });
}

// For every node n: out[n] = sum over the rows m that n is the `self_slot` endpoint of (crow/col) of
// 1[pre_m > 0] * grad_m, where pre_m = self[n] + other[endpoint `1 - self_slot` of m]. With WithV,
// also vpart[block] = sum over those rows of relu(pre_m) * grad_m, per block of kNodeBlock nodes.
template <typename scalar_t, typename index_t, bool WithV>
void edge_mlp_side(const scalar_t* __restrict__ self, const scalar_t* __restrict__ other,
                   const index_t* __restrict__ pairs, int64_t other_slot, int64_t other_offset,
                   const index_t* __restrict__ crow, const index_t* __restrict__ col,
                   const scalar_t* __restrict__ grad, int64_t num_nodes, int64_t hidden, scalar_t* __restrict__ out,
                   scalar_t* __restrict__ vpart) {
  const int64_t blocks = (num_nodes + kNodeBlock - 1) / kNodeBlock;
  at::parallel_for(0, blocks, 1, [&](int64_t first, int64_t last) {
    for (int64_t block = first; block < last; ++block) {
      scalar_t* __restrict__ vp = WithV ? vpart + block * hidden : nullptr;
      if (WithV) std::fill(vp, vp + hidden, scalar_t(0));
      const int64_t stop = std::min(num_nodes, (block + 1) * kNodeBlock);
      for (int64_t n = block * kNodeBlock; n < stop; ++n) {
        scalar_t* __restrict__ o = out + n * hidden;
        std::fill(o, o + hidden, scalar_t(0));
        const scalar_t* __restrict__ ps = self + n * hidden;
        for (int64_t k = crow[n]; k < crow[n + 1]; ++k) {
          const int64_t m = col[k];
          const scalar_t* __restrict__ po =
              other + (static_cast<int64_t>(pairs[2 * m + other_slot]) - other_offset) * hidden;
          const scalar_t g = grad[m];
          for (int64_t h = 0; h < hidden; ++h) {
            const scalar_t pre = ps[h] + po[h];
            const scalar_t on = static_cast<scalar_t>(pre > scalar_t(0)) * g;
            o[h] += on;
            if (WithV) vp[h] += on * pre;
          }
        }
      }
    }
  });
}

void check_inputs(const torch::Tensor& a, const torch::Tensor& b, const torch::Tensor& v, const torch::Tensor& pairs) {
  TORCH_CHECK(a.device().is_cpu() && b.device().is_cpu() && v.device().is_cpu(), "edge_mlp: CPU tensors only");
  TORCH_CHECK(a.dim() == 2 && b.sizes() == a.sizes(), "edge_mlp: a and b must be (N, H) of one shape");
  TORCH_CHECK(v.dim() == 1 && v.size(0) == a.size(1), "edge_mlp: v must be (H,)");
  TORCH_CHECK(a.scalar_type() == b.scalar_type() && a.scalar_type() == v.scalar_type(), "edge_mlp: one float dtype");
  TORCH_CHECK(pairs.dim() == 2 && pairs.size(1) == 2, "edge_mlp: pairs must be (M, 2)");
}


// Start offset of each run (B + 1,).
std::vector<int64_t> run_offsets(const torch::Tensor& runs) {
  auto r = runs.to(torch::kInt64).contiguous();
  const auto* p = r.data_ptr<int64_t>();
  std::vector<int64_t> offsets(r.size(0) + 1, 0);
  for (int64_t g = 0; g < r.size(0); ++g) offsets[g + 1] = offsets[g] + p[g];
  return offsets;
}

}  // namespace

// out (M,): v . relu(a[pairs[m, 0]] + b[pairs[m, 1] - N]).
torch::Tensor edge_mlp_forward(torch::Tensor a, torch::Tensor b, torch::Tensor v, torch::Tensor pairs) {
  check_inputs(a, b, v, pairs);
  a = a.contiguous();
  b = b.contiguous();
  v = v.contiguous();
  pairs = pairs.contiguous();
  auto out = torch::empty({pairs.size(0)}, a.options());
  AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "edge_mlp_forward", [&] {
    AT_DISPATCH_INDEX_TYPES(pairs.scalar_type(), "edge_mlp_forward", [&] {
      edge_mlp_forward_impl<scalar_t, index_t>(a.data_ptr<scalar_t>(), b.data_ptr<scalar_t>(), v.data_ptr<scalar_t>(),
                                               pairs.data_ptr<index_t>(), a.size(0), pairs.size(0), a.size(1),
                                               out.data_ptr<scalar_t>());
    });
  });
  return out;
}

// (grad_a (N, H), grad_b (N, H), grad_v (H,)) of edge_mlp_forward for the upstream gradient grad (M,).
// src_crow/src_col: the rows grouped by pairs[:, 0]; dst_crow/dst_col: grouped by pairs[:, 1] - N.
std::vector<torch::Tensor> edge_mlp_backward(torch::Tensor grad, torch::Tensor a, torch::Tensor b, torch::Tensor v,
                                             torch::Tensor pairs, torch::Tensor src_crow, torch::Tensor src_col,
                                             torch::Tensor dst_crow, torch::Tensor dst_col) {
  check_inputs(a, b, v, pairs);
  TORCH_CHECK(grad.dim() == 1 && grad.size(0) == pairs.size(0), "edge_mlp: grad must be (M,)");
  TORCH_CHECK(src_crow.scalar_type() == pairs.scalar_type() && src_col.scalar_type() == pairs.scalar_type() &&
                  dst_crow.scalar_type() == pairs.scalar_type() && dst_col.scalar_type() == pairs.scalar_type(),
              "edge_mlp: index tensors of one dtype");
  TORCH_CHECK(src_crow.size(0) == a.size(0) + 1 && dst_crow.size(0) == a.size(0) + 1, "edge_mlp: crow must be (N+1,)");
  a = a.contiguous();
  b = b.contiguous();
  v = v.contiguous();
  pairs = pairs.contiguous();
  grad = grad.contiguous().to(a.scalar_type());
  const int64_t n = a.size(0), hidden = a.size(1);
  auto grad_a = torch::empty({n, hidden}, a.options());
  auto grad_b = torch::empty({n, hidden}, a.options());
  auto vpart = torch::empty({(n + kNodeBlock - 1) / kNodeBlock, hidden}, a.options());
  AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "edge_mlp_backward", [&] {
    AT_DISPATCH_INDEX_TYPES(pairs.scalar_type(), "edge_mlp_backward", [&] {
      const auto* p = pairs.data_ptr<index_t>();
      const auto* g = grad.data_ptr<scalar_t>();
      edge_mlp_side<scalar_t, index_t, true>(a.data_ptr<scalar_t>(), b.data_ptr<scalar_t>(), p, 1, n,
                                             src_crow.contiguous().data_ptr<index_t>(),
                                             src_col.contiguous().data_ptr<index_t>(), g, n, hidden,
                                             grad_a.data_ptr<scalar_t>(), vpart.data_ptr<scalar_t>());
      edge_mlp_side<scalar_t, index_t, false>(b.data_ptr<scalar_t>(), a.data_ptr<scalar_t>(), p, 0, 0,
                                              dst_crow.contiguous().data_ptr<index_t>(),
                                              dst_col.contiguous().data_ptr<index_t>(), g, n, hidden,
                                              grad_b.data_ptr<scalar_t>(), nullptr);
    });
  });
  // The blocks' partial sums in block order: a fixed order whatever the thread count.
  auto grad_v = torch::zeros({hidden}, a.options());
  AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "edge_mlp_grad_v", [&] {
    const auto* vp = vpart.data_ptr<scalar_t>();
    auto* gv = grad_v.data_ptr<scalar_t>();
    for (int64_t block = 0; block < vpart.size(0); ++block)
      for (int64_t h = 0; h < hidden; ++h) gv[h] += vp[block * hidden + h];
  });
  grad_a.mul_(v);
  grad_b.mul_(v);
  return {grad_a, grad_b, grad_v};
}

// (values (E,), w (M,), scale (B,)): w_m = s_m * scale_g with scale_g = count_g / sum_{m in g} s_m, the
// rows of subgraph g being the g-th run of `runs`; values_k = norm_k * w[to_key_k] (w_k when to_key is
// empty: the rows are the key order).
std::vector<torch::Tensor> scorer_values_forward(torch::Tensor s, torch::Tensor norm, torch::Tensor to_key,
                                                 torch::Tensor runs, torch::Tensor count) {
  TORCH_CHECK(s.device().is_cpu() && norm.device().is_cpu(), "scorer_values: CPU tensors only");
  TORCH_CHECK(s.scalar_type() == norm.scalar_type() && count.scalar_type() == s.scalar_type(),
              "scorer_values: one float dtype");
  TORCH_CHECK(runs.size(0) == count.size(0), "scorer_values: runs and count must be (B,)");
  s = s.contiguous();
  norm = norm.contiguous();
  count = count.contiguous();
  const auto offsets = run_offsets(runs);
  const int64_t rows = s.size(0), entries = norm.size(0), graphs = runs.size(0);
  TORCH_CHECK(offsets.back() == rows, "scorer_values: runs must add up to the rows");
  const bool keyed = to_key.numel() > 0;
  TORCH_CHECK(keyed ? to_key.size(0) == entries : rows == entries, "scorer_values: to_key must be (E,)");
  auto w = torch::empty({rows}, s.options());
  auto scale = torch::empty({graphs}, s.options());
  auto out = torch::empty({entries}, s.options());
  AT_DISPATCH_FLOATING_TYPES(s.scalar_type(), "scorer_values_forward", [&] {
    const auto* ps = s.data_ptr<scalar_t>();
    const auto* pc = count.data_ptr<scalar_t>();
    auto* pw = w.data_ptr<scalar_t>();
    auto* pscale = scale.data_ptr<scalar_t>();
    at::parallel_for(0, graphs, 1, [&](int64_t first, int64_t last) {
      for (int64_t g = first; g < last; ++g) {
        scalar_t total = 0;
        for (int64_t m = offsets[g]; m < offsets[g + 1]; ++m) total += ps[m];
        const scalar_t sc = pc[g] / total;
        pscale[g] = sc;
        for (int64_t m = offsets[g]; m < offsets[g + 1]; ++m) pw[m] = ps[m] * sc;
      }
    });
    const auto* pn = norm.data_ptr<scalar_t>();
    auto* po = out.data_ptr<scalar_t>();
    if (!keyed) {
      at::parallel_for(0, entries, kRowGrain, [&](int64_t begin, int64_t end) {
        for (int64_t k = begin; k < end; ++k) po[k] = pn[k] * pw[k];
      });
      return;
    }
    auto key = to_key.contiguous();
    AT_DISPATCH_INDEX_TYPES(key.scalar_type(), "scorer_values_forward", [&] {
      const auto* pk = key.data_ptr<index_t>();
      at::parallel_for(0, entries, kRowGrain, [&](int64_t begin, int64_t end) {
        for (int64_t k = begin; k < end; ++k) po[k] = pn[k] * pw[static_cast<int64_t>(pk[k])];
      });
    });
  });
  return {out, w, scale};
}

// d loss / d s (M,) for scorer_values_forward, from d loss / d values (E,):
//   gw_m = sum over the entries k that carry row m of grad_k * norm_k (entries key_position[m] and
//          key_position[m + M] of a paired graph; entry m when key_position is empty),
//   grad_s_m = scale_g * (gw_m - sum_{m' in g} gw_m' w_m' / count_g).
torch::Tensor scorer_values_backward(torch::Tensor grad, torch::Tensor w, torch::Tensor scale, torch::Tensor norm,
                                     torch::Tensor key_position, torch::Tensor runs, torch::Tensor count) {
  TORCH_CHECK(grad.size(0) == norm.size(0), "scorer_values: grad must be (E,)");
  grad = grad.contiguous().to(w.scalar_type());
  w = w.contiguous();
  norm = norm.contiguous();
  count = count.contiguous();
  const auto offsets = run_offsets(runs);
  const int64_t rows = w.size(0), graphs = runs.size(0);
  const bool keyed = key_position.numel() > 0;
  TORCH_CHECK(keyed ? key_position.size(0) == 2 * rows : grad.size(0) == rows,
              "scorer_values: key_position must be (2M,)");
  auto grad_s = torch::empty({rows}, w.options());
  auto kp = keyed ? key_position.contiguous() : key_position;
  AT_DISPATCH_FLOATING_TYPES(w.scalar_type(), "scorer_values_backward", [&] {
    const auto* pg = grad.data_ptr<scalar_t>();
    const auto* pn = norm.data_ptr<scalar_t>();
    const auto* pw = w.data_ptr<scalar_t>();
    const auto* pscale = scale.data_ptr<scalar_t>();
    const auto* pc = count.data_ptr<scalar_t>();
    auto* out = grad_s.data_ptr<scalar_t>();
    AT_DISPATCH_INDEX_TYPES(keyed ? kp.scalar_type() : at::kLong, "scorer_values_backward", [&] {
      const index_t* pk = keyed ? kp.data_ptr<index_t>() : nullptr;
      at::parallel_for(0, graphs, 1, [&](int64_t first, int64_t last) {
        for (int64_t g = first; g < last; ++g) {
          scalar_t inner = 0;
          for (int64_t m = offsets[g]; m < offsets[g + 1]; ++m) {
            scalar_t gw;
            if (pk != nullptr) {
              const int64_t k0 = pk[m], k1 = pk[m + rows];
              gw = pg[k0] * pn[k0] + pg[k1] * pn[k1];
            } else {
              gw = pg[m] * pn[m];
            }
            out[m] = gw;
            inner += gw * pw[m];
          }
          inner /= pc[g];
          for (int64_t m = offsets[g]; m < offsets[g + 1]; ++m) out[m] = (out[m] - inner) * pscale[g];
        }
      });
    });
  });
  return grad_s;
}

// RelationalGraph.build for the paired layout (edge e + E/2 is edge e reversed, same type). Returns
// {ok, key_perm, key_crow, key_col, src_crow, src_col, dst_crow, t_perm, key_sorted, norm_sorted,
// position}; ok is a 0-dim bool that is false when the edges are not laid out so (then the others
// are undefined). Index outputs are `index_dtype` except key_perm (int64); norm_sorted is float32.
std::vector<torch::Tensor> paired_graph_build(torch::Tensor src, torch::Tensor dst, torch::Tensor type,
                                              int64_t num_nodes, int64_t num_relations, bool mean_over_node,
                                              at::ScalarType index_dtype) {
  TORCH_CHECK(src.scalar_type() == at::kLong && dst.scalar_type() == at::kLong && type.scalar_type() == at::kLong,
              "paired_graph_build: int64 src, dst, type");
  src = src.contiguous();
  dst = dst.contiguous();
  type = type.contiguous();
  const int64_t edges = src.size(0), half = edges / 2, slots = num_nodes * num_relations;
  const auto* ps = src.data_ptr<int64_t>();
  const auto* pd = dst.data_ptr<int64_t>();
  const auto* pt = type.data_ptr<int64_t>();
  bool ok = edges % 2 == 0;
  for (int64_t e = 0; ok && e < half; ++e) {
    ok = ps[e] == pd[e + half] && pd[e] == ps[e + half] && pt[e] == pt[e + half];
  }
  auto ok_t = torch::tensor(ok);
  if (!ok) return {ok_t};
  auto opt = src.options().dtype(index_dtype);
  auto key_perm = torch::empty({edges}, src.options());
  auto key_crow = torch::empty({slots + 1}, opt);
  auto key_col = torch::empty({edges}, opt);
  auto dst_crow = torch::empty({num_nodes + 1}, opt);
  auto t_perm = torch::empty({edges}, opt);
  auto key_sorted = torch::empty({edges}, opt);
  auto src_col = torch::empty({edges}, opt);
  auto position = torch::empty({edges}, opt);
  auto norm_sorted = torch::empty({edges}, src.options().dtype(at::kFloat));
  AT_DISPATCH_INDEX_TYPES(index_dtype, "paired_graph_build", [&] {
    auto* crow = key_crow.data_ptr<index_t>();
    auto* perm = key_perm.data_ptr<int64_t>();
    auto* pos = position.data_ptr<index_t>();
    auto* ksort = key_sorted.data_ptr<index_t>();
    auto* kcol = key_col.data_ptr<index_t>();
    auto* tp = t_perm.data_ptr<index_t>();
    auto* scol = src_col.data_ptr<index_t>();
    auto* dcrow = dst_crow.data_ptr<index_t>();
    auto* norm = norm_sorted.data_ptr<float>();
    // Counting sort by key, stable: counts, exclusive prefix sums, then each edge to its slot's cursor.
    std::vector<int64_t> cursor(slots + 1, 0);
    for (int64_t e = 0; e < edges; ++e) {
      TORCH_CHECK(ps[e] >= 0 && ps[e] < num_nodes && pd[e] >= 0 && pd[e] < num_nodes,
                  "paired_graph_build: a node index is outside [0, num_nodes)");
      TORCH_CHECK(pt[e] >= 0 && pt[e] < num_relations, "paired_graph_build: an edge type is outside [0, R)");
      ++cursor[pd[e] * num_relations + pt[e] + 1];
    }
    for (int64_t k = 0; k < slots; ++k) cursor[k + 1] += cursor[k];
    for (int64_t k = 0; k <= slots; ++k) crow[k] = static_cast<index_t>(cursor[k]);
    for (int64_t n = 0; n <= num_nodes; ++n) dcrow[n] = static_cast<index_t>(cursor[n * num_relations]);
    for (int64_t e = 0; e < edges; ++e) {
      const int64_t p = cursor[pd[e] * num_relations + pt[e]]++;
      perm[p] = e;
      pos[e] = static_cast<index_t>(p);
    }
    at::parallel_for(0, edges, kRowGrain, [&](int64_t begin, int64_t end) {
      for (int64_t p = begin; p < end; ++p) {
        const int64_t e = perm[p];
        const int64_t k = pd[e] * num_relations + pt[e];
        ksort[p] = static_cast<index_t>(k);
        kcol[p] = static_cast<index_t>(ps[e]);
        // A^T's p-th nonzero is the reverse of A's p-th edge; its key position is the reverse's position.
        tp[p] = pos[e < half ? e + half : e - half];
        if (mean_over_node) {
          const int64_t n = pd[e];
          norm[p] = 1.0f / static_cast<float>(std::max<int64_t>(1, dcrow[n + 1] - dcrow[n]));
        } else {
          norm[p] = 1.0f / static_cast<float>(std::max<int64_t>(1, crow[k + 1] - crow[k]));
        }
      }
    });
    at::parallel_for(0, edges, kRowGrain, [&](int64_t begin, int64_t end) {
      for (int64_t p = begin; p < end; ++p) scol[p] = ksort[tp[p]];
    });
  });
  // Paired: A^T's rows (sources) count what A's rows (destinations) count.
  return {ok_t, key_perm, key_crow, key_col, dst_crow, src_col, dst_crow.clone(), t_perm, key_sorted, norm_sorted,
          position};
}

// RelationalGraph.dropout_undirected's operator values: entry p (key order) keeps its rating
// key_perm[p] mod E/2 when keep[rating]; each group (a slot, or a node, with row pointers crow) divides
// by its count of kept entries (at least 1); dropped entries get 0. float32 (E,).
torch::Tensor paired_dropout_norm(torch::Tensor keep, torch::Tensor key_perm, torch::Tensor crow) {
  TORCH_CHECK(keep.scalar_type() == at::kBool && key_perm.scalar_type() == at::kLong, "paired_dropout_norm: dtypes");
  keep = keep.contiguous();
  key_perm = key_perm.contiguous();
  crow = crow.contiguous();
  const int64_t edges = key_perm.size(0), half = keep.size(0), groups = crow.size(0) - 1;
  TORCH_CHECK(edges == 2 * half, "paired_dropout_norm: keep must be (E/2,)");
  auto norm = torch::empty({edges}, key_perm.options().dtype(at::kFloat));
  const auto* pk = keep.data_ptr<bool>();
  const auto* perm = key_perm.data_ptr<int64_t>();
  auto* out = norm.data_ptr<float>();
  AT_DISPATCH_INDEX_TYPES(crow.scalar_type(), "paired_dropout_norm", [&] {
    const auto* pc = crow.data_ptr<index_t>();
    at::parallel_for(0, groups, kRowGrain / 8, [&](int64_t first, int64_t last) {
      for (int64_t g = first; g < last; ++g) {
        int64_t kept = 0;
        for (int64_t p = pc[g]; p < pc[g + 1]; ++p) {
          const int64_t e = perm[p];
          kept += pk[e < half ? e : e - half];
        }
        const float inv = 1.0f / static_cast<float>(std::max<int64_t>(kept, 1));
        for (int64_t p = pc[g]; p < pc[g + 1]; ++p) {
          const int64_t e = perm[p];
          out[p] = pk[e < half ? e : e - half] ? inv : 0.0f;
        }
      }
    });
  });
  return norm;
}

// RelationalGraph.scorer_rows(per_rating=True) for the paired layout; the rows are the ratings, the
// first E/2 edges. Returns {src_crow, src_col, dst_crow, dst_col, pairs, key_half}: the rows grouped by
// source and by destination (CSR, `crow`'s dtype), [src, N + dst] per row, and each key position's
// rating (int64).
std::vector<torch::Tensor> paired_scorer_rows(torch::Tensor src, torch::Tensor dst, torch::Tensor key_perm,
                                              int64_t num_nodes, at::ScalarType index_dtype) {
  src = src.contiguous();
  dst = dst.contiguous();
  key_perm = key_perm.contiguous();
  const int64_t edges = key_perm.size(0), half = edges / 2;
  auto opt = src.options().dtype(index_dtype);
  auto src_crow = torch::zeros({num_nodes + 1}, opt);
  auto dst_crow = torch::zeros({num_nodes + 1}, opt);
  auto src_col = torch::empty({half}, opt);
  auto dst_col = torch::empty({half}, opt);
  auto pairs = torch::empty({half, 2}, opt);
  auto key_half = torch::empty({edges}, key_perm.options());
  const auto* ps = src.data_ptr<int64_t>();
  const auto* pd = dst.data_ptr<int64_t>();
  const auto* perm = key_perm.data_ptr<int64_t>();
  auto* kh = key_half.data_ptr<int64_t>();
  AT_DISPATCH_INDEX_TYPES(index_dtype, "paired_scorer_rows", [&] {
    auto* scrow = src_crow.data_ptr<index_t>();
    auto* dcrow = dst_crow.data_ptr<index_t>();
    auto* scol = src_col.data_ptr<index_t>();
    auto* dcol = dst_col.data_ptr<index_t>();
    auto* pp = pairs.data_ptr<index_t>();
    bool src_sorted = true;
    for (int64_t m = 0; m < half; ++m) {
      ++scrow[ps[m] + 1];
      ++dcrow[pd[m] + 1];
      pp[2 * m] = static_cast<index_t>(ps[m]);
      pp[2 * m + 1] = static_cast<index_t>(pd[m] + num_nodes);
      if (m > 0 && ps[m] < ps[m - 1]) src_sorted = false;
    }
    for (int64_t n = 0; n < num_nodes; ++n) {
      scrow[n + 1] += scrow[n];
      dcrow[n + 1] += dcrow[n];
    }
    // Key order groups by destination: its first-half edges are the ratings by destination, its
    // second-half edges the reversed ratings by the reverse's destination, the rating's source.
    int64_t nd = 0, ns = 0;
    for (int64_t p = 0; p < edges; ++p) {
      const int64_t e = perm[p];
      if (e < half) {
        dcol[nd++] = static_cast<index_t>(e);
        kh[p] = e;
      } else {
        if (!src_sorted) scol[ns++] = static_cast<index_t>(e - half);
        kh[p] = e - half;
      }
    }
    if (src_sorted) {
      for (int64_t m = 0; m < half; ++m) scol[m] = static_cast<index_t>(m);
    }
  });
  return {src_crow, src_col, dst_crow, dst_col, pairs, key_half};
}

// Subgraph extraction's scan (cmcrec.graph.subgraph): segment s is the rating list of the selected user
// u_node[s] of subgraph u_graph[s] (CSR rows indptr, items rated_item). Rating p is kept when its item is
// selected in the same subgraph, id = lookup[u_graph[s] * num_items + rated_item[p]] >= 0, and p is not
// skip[s] (the target rating, or -1). Returns {count (S,), dst (K,), pos (K,)}, int64: the kept ratings
// per segment, and each kept rating's item node id and CSR position, segment after segment, each
// segment by ascending item node id (an item occurs once in a user's list, so the order is unique).
// With segments in source-node order, that is extract_subgraphs' canonical (source, destination)
// order. The PyTorch path builds every scanned rating's position, query and id as (total,) arrays and
// then sorts all kept ratings; this is one pass that sorts a segment only when its ids are out of order
// (the target item's id leads its subgraph). lookup holds B * num_items entries, for subgraphs < B.
// With several threads (one in a DataLoader worker), each scans a contiguous range of segments (split
// by their ratings) into its own region of the output, and the regions are then moved together in
// order: the same output for any thread count.
template <typename item_t, typename id_t>
int64_t extraction_scan_impl(const int64_t* indptr, const item_t* rated_item, const int64_t* u_node,
                             const int64_t* u_graph, const int64_t* skip, const id_t* lookup, int64_t num_items,
                             int64_t first, int64_t last, int64_t* count, int64_t* dst, int64_t* pos) {
  int64_t k = 0;
  std::vector<std::pair<int64_t, int64_t>> run;
  for (int64_t s = first; s < last; ++s) {
    const int64_t base = u_graph[s] * num_items, drop = skip[s], before = k;
    for (int64_t p = indptr[u_node[s]]; p < indptr[u_node[s] + 1]; ++p) {
      const int64_t id = static_cast<int64_t>(lookup[base + static_cast<int64_t>(rated_item[p])]);
      if (id >= 0 && p != drop) {
        dst[k] = id;
        pos[k] = p;
        ++k;
      }
    }
    count[s] = k - before;
    if (!std::is_sorted(dst + before, dst + k)) {
      run.clear();
      for (int64_t j = before; j < k; ++j) run.emplace_back(dst[j], pos[j]);
      std::sort(run.begin(), run.end());
      for (int64_t j = before; j < k; ++j) {
        dst[j] = run[j - before].first;
        pos[j] = run[j - before].second;
      }
    }
  }
  return k;
}

std::vector<torch::Tensor> extraction_scan(torch::Tensor indptr, torch::Tensor rated_item, torch::Tensor u_node,
                                           torch::Tensor u_graph, torch::Tensor skip, torch::Tensor lookup,
                                           int64_t num_items) {
  for (const auto* t : {&indptr, &u_node, &u_graph, &skip}) {
    TORCH_CHECK(t->scalar_type() == at::kLong && t->device().is_cpu(), "extraction_scan: int64 CPU indices");
  }
  TORCH_CHECK(u_graph.numel() == u_node.numel() && skip.numel() == u_node.numel(), "extraction_scan: shapes");
  TORCH_CHECK(rated_item.device().is_cpu() && lookup.device().is_cpu(), "extraction_scan: CPU tensors");
  indptr = indptr.contiguous();
  rated_item = rated_item.contiguous();
  u_node = u_node.contiguous();
  u_graph = u_graph.contiguous();
  skip = skip.contiguous();
  lookup = lookup.contiguous();
  const int64_t segments = u_node.numel();
  const auto* pi = indptr.data_ptr<int64_t>();
  const auto* pu = u_node.data_ptr<int64_t>();
  const int64_t users = indptr.numel() - 1;
  const auto* pg = u_graph.data_ptr<int64_t>();
  std::vector<int64_t> scanned(segments + 1, 0);  // ratings scanned before each segment
  for (int64_t s = 0; s < segments; ++s) {
    TORCH_CHECK(pu[s] >= 0 && pu[s] < users && pg[s] >= 0 && (pg[s] + 1) * num_items <= lookup.numel(),
                "extraction_scan: segment ", s, " names user ", pu[s], " of subgraph ", pg[s],
                " outside the graph or the look-up table");
    scanned[s + 1] = scanned[s] + pi[pu[s] + 1] - pi[pu[s]];
  }
  const int64_t total = scanned[segments];
  auto opts = indptr.options();
  auto count = torch::empty({segments}, opts), dst = torch::empty({total}, opts), pos = torch::empty({total}, opts);
  // Chunk c covers the segments from bounds[c]; it writes from scanned[bounds[c]] (room for all it scans).
  const int64_t chunks = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), total / kRowGrain));
  std::vector<int64_t> bounds(chunks + 1, segments), kept(chunks, 0);
  for (int64_t c = 0; c < chunks; ++c) {
    bounds[c] = std::lower_bound(scanned.begin(), scanned.end() - 1, total * c / chunks) - scanned.begin();
  }
  auto* pd = dst.data_ptr<int64_t>();
  auto* pp = pos.data_ptr<int64_t>();
  AT_DISPATCH_INDEX_TYPES(rated_item.scalar_type(), "extraction_scan", [&] {
    using item_t = index_t;
    const auto* items = rated_item.data_ptr<item_t>();
    AT_DISPATCH_INDEX_TYPES(lookup.scalar_type(), "extraction_scan", [&] {
      at::parallel_for(0, chunks, 1, [&](int64_t c0, int64_t c1) {
        for (int64_t c = c0; c < c1; ++c) {
          const int64_t at_ = scanned[bounds[c]];
          kept[c] = extraction_scan_impl<item_t, index_t>(
              pi, items, pu, pg, skip.data_ptr<int64_t>(), lookup.data_ptr<index_t>(),
              num_items, bounds[c], bounds[c + 1], count.data_ptr<int64_t>(), pd + at_, pp + at_);
        }
      });
    });
  });
  int64_t k = 0;
  for (int64_t c = 0; c < chunks; ++c) {  // chunk c's region starts at or after k: move it left
    const int64_t at_ = scanned[bounds[c]];
    if (at_ != k) {
      std::memmove(pd + k, pd + at_, kept[c] * sizeof(int64_t));
      std::memmove(pp + k, pp + at_, kept[c] * sizeof(int64_t));
    }
    k += kept[c];
  }
  return {count, dst.narrow(0, 0, k), pos.narrow(0, 0, k)};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("extraction_scan", &extraction_scan, "the selected users' ratings whose item is in the same subgraph");
  m.def("edge_mlp_forward", &edge_mlp_forward, "v . relu(a[src] + b[dst]) per scorer row");
  m.def("edge_mlp_backward", &edge_mlp_backward, "gradients of edge_mlp_forward");
  m.def("paired_graph_build", &paired_graph_build, "RelationalGraph.build for the paired layout");
  m.def("paired_dropout_norm", &paired_dropout_norm, "operator values of a graph with ratings dropped");
  m.def("paired_scorer_rows", &paired_scorer_rows, "RelationalGraph.scorer_rows(per_rating=True), paired layout");
  m.def("scorer_values_forward", &scorer_values_forward, "operator values from scorer rows' scores");
  m.def("scorer_values_backward", &scorer_values_backward, "gradient of scorer_values_forward in the scores");
}
