//! noop: injects nothing and heals nothing. It exists to exercise the fault lifecycle
//! (plan, start, `during` checks, heal, history) where a real fault would get in the way:
//! the runner's own tests and suites that test the harness itself.

use super::{Fault, FaultError, Heal, PlanContext, Started};
use crate::live::Live;
use crate::provider::Machines;
use crate::suite::FaultStep;

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Noop {
    /// The node it "hits" (from the seed when the step names none), so that a plan with
    /// it shows a seeded choice like every other fault.
    pub node: String,
}

impl Fault for Noop {
    const NAME: &'static str = "noop";
    const ABOUT: &'static str = "injects nothing (tests of the harness itself)";

    fn plan(cx: &mut PlanContext<'_>, step: &FaultStep) -> Self {
        Noop {
            node: cx.node(step),
        }
    }

    fn describe(&self) -> String {
        format!("node={}", self.node)
    }

    fn start<'m>(
        &self,
        live: &mut Live,
        _machines: Option<&'m mut dyn Machines>,
    ) -> Result<Started<'m>, FaultError> {
        if live.cluster.node(&self.node).is_none() {
            return Err(FaultError::NotProved {
                fault: Self::NAME,
                node: self.node.clone(),
                what: "no such node".into(),
            });
        }
        Ok(Started {
            proof: vec![format!("nothing injected on {}", self.node)],
            heal: Heal::with(Self::NAME, || Ok(vec!["nothing to heal".into()])),
        })
    }
}
