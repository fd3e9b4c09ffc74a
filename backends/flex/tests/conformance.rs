//! The whole conformance suite on burn-flex (f32).

kv_routing_conformance::conformance_suite!(burn_flex::Flex, burn_flex::FlexDevice);
