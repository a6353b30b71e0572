// One decode step's attention on the CPU: each row has a single query, and every (row, key/value head) is
// computed by one loop over the cache columns the row's mask keeps, for all the query heads that share it,
// reading each key and value once. Batched matrix products instead pay a GEMV call per (row, query head)
// and read the masked columns too. Columns go four at a time (four dot products in flight, one update of
// the output accumulators per four values), and the common head sizes are compiled as constants.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

namespace {

// DIM > 0: the head size known at compile time, so that the per-column products over it unroll into a few
// vector instructions; DIM == 0 reads it from q.
template <typename T, int64_t DIM>
void attend(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& mask,
            at::Tensor& out, double scale) {
  const int64_t rows = q.size(0), heads = q.size(1), dim = DIM > 0 ? DIM : q.size(2);
  const int64_t kv_heads = k.size(1), width = k.size(2), group = heads / kv_heads;
  const T* qp = q.data_ptr<T>();
  const T* kp = k.data_ptr<T>();
  const T* vp = v.data_ptr<T>();
  const bool* mp = mask.data_ptr<bool>();
  float* op = out.data_ptr<float>();
  const int64_t qs0 = q.stride(0), qs1 = q.stride(1), ms0 = mask.stride(0), ms1 = mask.stride(1);
  const int64_t ks0 = k.stride(0), ks1 = k.stride(1), ks2 = k.stride(2);
  const int64_t vs0 = v.stride(0), vs1 = v.stride(1), vs2 = v.stride(2);
  // masked columns score this (finite: the file is built with -ffast-math, so that exp vectorizes); their
  // probability underflows to 0 and the value pass skips them anyway
  const float skipped = -1e30f;
  const int64_t ahead = 8;  // columns
  const int64_t per_line = std::max<int64_t>(1, 64 / static_cast<int64_t>(sizeof(T)));  // values per cache line
  // one (row, kv head) per task: the `group` query heads that share a key/value head read each of its columns
  // once together, instead of once per query head
  at::parallel_for(0, rows * kv_heads, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> scores(group * width), query(group * dim), acc(group * dim), total(group);
    for (int64_t i = begin; i < end; ++i) {
      const int64_t r = i / kv_heads, kv = i % kv_heads;
      const bool* keep = mp + r * ms0;
      // continuous batching masks a prefix of each row's window (columns before its first): only the span
      // from the first to the last kept column is read at all
      int64_t lo = 0, hi = width;
      while (lo < width && !keep[lo * ms1]) ++lo;
      while (hi > lo && !keep[(hi - 1) * ms1]) --hi;
      for (int64_t g = 0; g < group; ++g) {
        const T* qr = qp + r * qs0 + (kv * group + g) * qs1;
        for (int64_t d = 0; d < dim; ++d) query[g * dim + d] = static_cast<float>(qr[d]) * static_cast<float>(scale);
      }
      const T* kr = kp + r * ks0 + kv * ks1;
      const T* vr = vp + r * vs0 + kv * vs1;
      // four columns per pass over the query where they exist: four independent sums in flight
      for (int64_t w = lo; w < hi;) {
        const int64_t n = std::min<int64_t>(4, hi - w);
        // a step's key/value buffers do not fit in the CPU's caches: request the keys a few columns ahead,
        // and the values, which the pass after this one reads
        for (int64_t c = 0; c < n; ++c) {
          const int64_t next = std::min(w + c + ahead, hi - 1);
          for (int64_t line = 0; line < dim; line += per_line) {
            __builtin_prefetch(kr + next * ks2 + line);
            __builtin_prefetch(vr + (w + c) * vs2 + line);
          }
        }
        if (n == 4) {
          const T* __restrict k0 = kr + w * ks2;
          const T* __restrict k1 = k0 + ks2;
          const T* __restrict k2 = k1 + ks2;
          const T* __restrict k3 = k2 + ks2;
          for (int64_t g = 0; g < group; ++g) {
            const float* __restrict qg = query.data() + g * dim;
            float s0 = 0.f, s1 = 0.f, s2 = 0.f, s3 = 0.f;
#pragma omp simd reduction(+ : s0, s1, s2, s3)
            for (int64_t d = 0; d < dim; ++d) {
              s0 += qg[d] * static_cast<float>(k0[d]);
              s1 += qg[d] * static_cast<float>(k1[d]);
              s2 += qg[d] * static_cast<float>(k2[d]);
              s3 += qg[d] * static_cast<float>(k3[d]);
            }
            float* sg = scores.data() + g * width + w;
            sg[0] = keep[w * ms1] ? s0 : skipped;
            sg[1] = keep[(w + 1) * ms1] ? s1 : skipped;
            sg[2] = keep[(w + 2) * ms1] ? s2 : skipped;
            sg[3] = keep[(w + 3) * ms1] ? s3 : skipped;
          }
          w += 4;
          continue;
        }
        const T* kw = kr + w * ks2;
        const bool kept = keep[w * ms1];
        for (int64_t g = 0; g < group; ++g) {
          const float* qg = query.data() + g * dim;
          float s = 0.f;
          if (kept) {
#pragma omp simd reduction(+ : s)
            for (int64_t d = 0; d < dim; ++d) s += qg[d] * static_cast<float>(kw[d]);
          }
          scores[g * width + w] = kept ? s : skipped;
        }
        ++w;
      }
      for (int64_t g = 0; g < group; ++g) {
        float* sg = scores.data() + g * width;
        float best = skipped;
        for (int64_t w = lo; w < hi; ++w) best = std::max(best, sg[w]);
#pragma omp simd
        for (int64_t w = lo; w < hi; ++w) sg[w] = std::exp(sg[w] - best);
      }
      std::fill(acc.begin(), acc.end(), 0.f);
      std::fill(total.begin(), total.end(), 0.f);
      // four kept columns per update of the accumulators where the mask allows: one read-modify-write of
      // them per four columns instead of one per column, which bounds this loop otherwise
      for (int64_t w = lo; w < hi;) {
        if (w + 4 <= hi && keep[w * ms1] && keep[(w + 1) * ms1] && keep[(w + 2) * ms1] && keep[(w + 3) * ms1]) {
          const T* __restrict v0 = vr + w * vs2;
          const T* __restrict v1 = v0 + vs2;
          const T* __restrict v2 = v1 + vs2;
          const T* __restrict v3 = v2 + vs2;
          for (int64_t g = 0; g < group; ++g) {
            const float* sg = scores.data() + g * width + w;
            const float p0 = sg[0], p1 = sg[1], p2 = sg[2], p3 = sg[3];
            total[g] += (p0 + p1) + (p2 + p3);
            float* __restrict ag = acc.data() + g * dim;
#pragma omp simd
            for (int64_t d = 0; d < dim; ++d)
              ag[d] += (p0 * static_cast<float>(v0[d]) + p1 * static_cast<float>(v1[d])) +
                       (p2 * static_cast<float>(v2[d]) + p3 * static_cast<float>(v3[d]));
          }
          w += 4;
          continue;
        }
        if (keep[w * ms1]) {
          const T* __restrict vw = vr + w * vs2;
          for (int64_t g = 0; g < group; ++g) {
            const float p = scores[g * width + w];
            total[g] += p;
            float* __restrict ag = acc.data() + g * dim;
#pragma omp simd
            for (int64_t d = 0; d < dim; ++d) ag[d] += p * static_cast<float>(vw[d]);
          }
        }
        ++w;
      }
      // a row that keeps no column attends to nothing: zeros
      for (int64_t g = 0; g < group; ++g) {
        const float inv = total[g] > 0.f ? 1.f / total[g] : 0.f;
        float* o = op + (r * heads + kv * group + g) * dim;
        for (int64_t d = 0; d < dim; ++d) o[d] = acc[g * dim + d] * inv;
      }
    }
  });
}

template <typename T>
void attend_any(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& mask,
                at::Tensor& out, double scale) {
  switch (q.size(2)) {  // the head sizes of the model families the engine decodes
    case 32: return attend<T, 32>(q, k, v, mask, out, scale);
    case 64: return attend<T, 64>(q, k, v, mask, out, scale);
    case 128: return attend<T, 128>(q, k, v, mask, out, scale);
    default: return attend<T, 0>(q, k, v, mask, out, scale);
  }
}

}  // namespace

// q [rows, heads, dim]; k, v [rows, kv_heads, width, dim] (any strides but a contiguous last dim, so a window
// of a larger cache is read in place); keep [rows, width] bool. Returns [rows, heads, dim] in q's dtype.
at::Tensor decode_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& keep,
                            double scale) {
  TORCH_CHECK(q.dim() == 3 && k.dim() == 4 && v.dim() == 4 && keep.dim() == 2,
              "expected q [rows, heads, dim], k and v [rows, kv_heads, width, dim], keep [rows, width]");
  TORCH_CHECK(q.device().is_cpu() && k.device().is_cpu() && v.device().is_cpu() && keep.device().is_cpu(),
              "CPU tensors only");
  TORCH_CHECK(q.scalar_type() == k.scalar_type() && k.scalar_type() == v.scalar_type(), "q, k, v differ in dtype");
  TORCH_CHECK(keep.scalar_type() == at::kBool, "keep must be bool");
  TORCH_CHECK(k.sizes() == v.sizes() && k.size(0) == q.size(0) && k.size(3) == q.size(2) &&
                  q.size(1) % k.size(1) == 0 && keep.size(0) == q.size(0) && keep.size(1) == k.size(2),
              "shapes do not match");
  TORCH_CHECK(q.stride(2) == 1 && k.stride(3) == 1 && v.stride(3) == 1, "the last dim must be contiguous");
  auto out = at::empty({q.size(0), q.size(1), q.size(2)}, q.options().dtype(at::kFloat));
  if (q.scalar_type() == at::kFloat) {
    attend_any<float>(q, k, v, keep, out, scale);
  } else if (q.scalar_type() == at::kBFloat16) {
    attend_any<at::BFloat16>(q, k, v, keep, out, scale);
  } else {
    TORCH_CHECK(false, "float32 or bfloat16 only");
  }
  return out.scalar_type() == q.scalar_type() ? out : out.to(q.scalar_type());
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("decode_attention", &decode_attention, "one decode step's attention over a masked cache window");
}
