#include <cmath>

#include "moe/trainer.h"

namespace moe {

double lr_at(const TrainConfig& c, int64_t step) {
    const int64_t it = step - 1;
    const int64_t decay = c.lr_decay_steps > 0 ? c.lr_decay_steps : c.max_steps;
    if (it < c.warmup_steps) return c.lr * (double)(it + 1) / (double)(c.warmup_steps + 1);
    if (it > decay) return c.min_lr;
    if (decay <= c.warmup_steps) return c.min_lr;
    double ratio = (double)(it - c.warmup_steps) / (double)(decay - c.warmup_steps);
    double coeff = 0.5 * (1.0 + std::cos(M_PI * ratio));
    return c.min_lr + coeff * (c.lr - c.min_lr);
}

}  // namespace moe
