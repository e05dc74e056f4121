"""Write the MJCF that the franka-sim server simulates, from the project's own ``urdf/``.

franka-sim (the FCI protocol simulator used by the protocol tests) loads its arm from
``$FR3_MJCF``; its default source downloads a model, which machines here cannot do. This
script turns ``urdf/panda.urdf`` into that MJCF with MuJoCo's own URDF import, so the simulated
arm is the one the rest of the project models.

It runs in the franka-sim virtualenv (MuJoCo < 3.3 lives there, not in the project's venv), so
it imports nothing from genpolicy_ros::

    .venv-franka-sim/bin/python genpolicy_ros/drivers/franka_sim_mjcf.py urdf/panda.urdf out.xml

What the conversion changes, and why:

* The fingers become fixed joints: franka-sim drives exactly seven arm joints and serves the
  gripper on its own; free finger joints would float unactuated.
* Rotor inertia (``armature``) and viscous damping are added per joint. URDF has no field for
  them, and franka-sim's explicit PD servo (kd up to 450 Nm s/rad on ``qfrc_applied``) is
  numerically unstable at a 1 ms step on the bare link inertia of the wrist.
* Contacts are disabled: the project's collision geometry is conservative boxes, which touch
  between non-adjacent links in ordinary poses and would brake the arm. Nothing in the protocol
  tests needs contact.
"""

import sys
import xml.etree.ElementTree as ET

# Per-joint rotor inertia [kg m^2] and damping [Nm s/rad] added to the URDF's link inertias.
# Chosen so kd * dt / (inertia + armature) < 1 for franka-sim's servo gains (explicit
# integration stays well damped), close to the reflected rotor inertia of the real arm.
ARMATURE_KGM2 = (0.6, 0.6, 0.5, 0.5, 0.3, 0.3, 0.3)
DAMPING_NMS = (1.0, 1.0, 1.0, 1.0, 0.5, 0.5, 0.5)


def urdf_to_mjcf_xml(urdf_text: str) -> str:
    """Return MJCF text for the arm described by ``urdf_text`` (needs ``mujoco``)."""
    import mujoco  # only in the franka-sim virtualenv

    root = ET.fromstring(urdf_text)
    for joint in root.findall('joint'):
        if joint.get('type') == 'prismatic':
            joint.set('type', 'fixed')
            for tag in ('axis', 'limit', 'mimic', 'dynamics'):
                for child in joint.findall(tag):
                    joint.remove(child)
    # Unique geom names keep MuJoCo's importer quiet; deliberately not "<link>_collision",
    # which would switch on franka-sim's self-collision reflex for these coarse boxes.
    for link in root.findall('link'):
        for k, geom in enumerate(link.findall('collision')):
            geom.set('name', f'{link.get("name")}_box{k}')
    extension = ET.SubElement(root, 'mujoco')
    ET.SubElement(extension, 'compiler', discardvisual='true', fusestatic='true',
                  balanceinertia='true')
    spec = mujoco.MjSpec.from_string(ET.tostring(root, encoding='unicode'))
    arm = [j for j in spec.joints if j.name.endswith(tuple(f'joint{i}' for i in range(1, 8)))]
    if len(arm) != 7:
        raise ValueError(f'expected 7 revolute arm joints, found {[j.name for j in arm]}')
    for joint, armature, damping in zip(arm, ARMATURE_KGM2, DAMPING_NMS):
        joint.armature = armature
        joint.damping = damping
    spec.option.disableflags |= mujoco.mjtDisableBit.mjDSBL_CONTACT
    spec.compile()  # fail here, with MuJoCo's message, rather than inside the server
    return spec.to_xml()


def main(argv=None) -> int:
    """Convert ``argv[0]`` (URDF) into ``argv[1]`` (MJCF)."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print('usage: franka_sim_mjcf.py IN.urdf OUT.xml', file=sys.stderr)
        return 2
    with open(args[0], 'r', encoding='utf-8') as f:
        xml = urdf_to_mjcf_xml(f.read())
    with open(args[1], 'w', encoding='utf-8') as f:
        f.write(xml)
    return 0


if __name__ == '__main__':
    sys.exit(main())
