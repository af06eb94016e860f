# Sourced by the device-call scripts (gpu_session.sh, gpu_paper.sh): unpack the carried data into a
# torchvision root ($R), install the carried wheels, and make $W, the folder that comes back.
# Carry `.gpu_data` (the .gz files of ../shared/data/gz under .gpu_data/t2/{MNIST,FashionMNIST}/, as
# ../shared/data/README.md says) and `.whl` (ART and its two missing dependencies).
export PYTHONUNBUFFERED=1
R=$PWD/.gpu_data/root
for d in MNIST FashionMNIST; do
  mkdir -p "$R/$d/raw"
  for f in .gpu_data/t2/$d/*.gz; do gunzip -c "$f" > "$R/$d/raw/$(basename "${f%.gz}")"; done
done
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=$PWD:/tmp/site
W=$OUT/w
mkdir -p "$W"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$W/gpu.txt"
date -u | tee -a "$W/gpu.txt"
