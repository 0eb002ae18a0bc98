// PVTT Template Transfer: show, on the node, what the model really rendered.
//
// The node returns {"ui": {"text": [...]}} with one sentence such as "working size 16x16, 9-frame
// windows overlapping 3; your 256x256 clip is rendered at 16x16 and upscaled 16x ...". This extension
// puts that sentence in a read-only box at the bottom of the node (and in its hover tooltip) after each
// run. The box is never saved: it is left out of the workflow's widgets_values and of the API prompt,
// so saved workflows and the widget order are unchanged.
import { app } from "../../scripts/app.js";

const NODE = "PVTTTemplateTransfer";
const WIDGET = "pvtt_working_size";

function showText(node, text) {
  let widget = node.widgets?.find((w) => w.name === WIDGET);
  if (!widget) {
    const box = document.createElement("textarea");
    box.readOnly = true;
    box.className = "comfy-multiline-input pvtt-working-size";
    box.style.cssText = "width:100%;min-height:4.5em;font-size:11px;opacity:0.85;resize:none;";
    widget = node.addDOMWidget(WIDGET, "pvtt_text", box, {
      serialize: false, // not in the API prompt
      hideOnZoom: false,
      getValue: () => box.value,
      setValue: (v) => { box.value = v; },
    });
    widget.serialize = false; // not in the workflow's widgets_values
    widget.element = box;
  }
  widget.element.value = text;
  widget.element.title = text;
  node.setSize?.([node.size[0], Math.max(node.size[1], node.computeSize()[1])]);
  node.setDirtyCanvas?.(true, true);
}

app.registerExtension({
  name: "PVTT.WorkingSize",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData?.name !== NODE) return;
    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (message) {
      const result = onExecuted?.apply(this, arguments);
      const text = Array.isArray(message?.text) ? message.text.join("\n") : message?.text;
      if (text) showText(this, String(text));
      return result;
    };
  },
});
